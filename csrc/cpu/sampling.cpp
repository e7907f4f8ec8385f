// CPU implementation of domino::sampling (semantics in domino/sampling.h).
//
// One row at a time, in a few streaming passes: (1) validity and max, (2) top-k radix select over
// ordered keys, (3) top-p radix select over fixed-point masses, (4) the Gumbel-max draw over the
// kept set. Rows are independent; the binding layer spreads them over its thread pool.
#include <vector>

#include "domino/sampling.h"

namespace domino {
namespace sampling {
namespace {

struct Scratch {
  std::vector<float> scaled;   // s_v = l_v / T
  std::vector<uint32_t> keys;  // ordered_key(s_v)
  std::vector<uint64_t> mass;  // fixed_mass(exp(s_v - m)), only when top-p is on
};

// k-th largest key (1-based k), MSB-first radix select.
uint32_t kth_largest_key(const std::vector<uint32_t>& keys, int64_t n, uint32_t k) {
  uint32_t prefix = 0, mask = 0, remaining = k;
  uint32_t hist[256];
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (auto& h : hist) h = 0;
    for (int64_t v = 0; v < n; ++v)
      if ((keys[v] & mask) == prefix) ++hist[(keys[v] >> shift) & 255u];
    const uint32_t bin = uint32_t(select_bucket_by_count(hist, remaining));
    prefix |= bin << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// Largest key t with mass({key >= max(t, floor_key)}) >= target.
uint32_t top_p_key(const Scratch& s, int64_t n, uint32_t floor_key, double target) {
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0;
  uint64_t hist[256];
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (auto& h : hist) h = 0;
    for (int64_t v = 0; v < n; ++v) {
      const uint32_t k = s.keys[v];
      if (k >= floor_key && (k & mask) == prefix) hist[(k >> shift) & 255u] += s.mass[v];
    }
    const uint32_t bin = uint32_t(select_bucket_by_mass(hist, above, target));
    prefix |= bin << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

template <typename T>
int64_t sample_row(const SampleParams& p, int64_t b, Scratch& s) {
  const RowParams rp = row_params(p, b);
  if (!rp.valid) return -1;
  const T* row = static_cast<const T*>(p.logits) + b * p.row_stride;
  const int64_t n = p.vocab;

  if (rp.greedy) {
    float best = -det::kInf;
    int64_t best_idx = -1;
    for (int64_t v = 0; v < n; ++v) {
      const float l = to_float(row[v]);
      if (det::is_nan(l) || l == det::kInf) return -1;
      if (l > best) { best = l; best_idx = v; }
    }
    return best_idx;  // -1 when every logit is -inf
  }

  s.scaled.resize(n);
  s.keys.resize(n);
  uint32_t max_key = 0;
  bool any = false;
  for (int64_t v = 0; v < n; ++v) {
    const float l = to_float(row[v]);
    if (det::is_nan(l) || l == det::kInf) return -1;
    any |= l > -det::kInf;
    const float sv = det::div(l, rp.temperature);
    s.scaled[v] = sv;
    const uint32_t k = det::ordered_key(sv);
    s.keys[v] = k;
    if (k > max_key) max_key = k;
  }
  const float m = det::key_to_float(max_key);
  if (!any || !det::is_finite(m)) return -1;

  uint32_t floor_key = 0;
  if (rp.top_k > 0) floor_key = kth_largest_key(s.keys, n, uint32_t(rp.top_k));
  if (rp.top_p < 1.0f) {
    s.mass.resize(n);
    uint64_t total = 0;
    for (int64_t v = 0; v < n; ++v) {
      const uint64_t w =
          s.keys[v] >= floor_key ? det::fixed_mass(det::exp(det::sub(s.scaled[v], m))) : 0;
      s.mass[v] = w;
      total += w;
    }
    const uint32_t pk = top_p_key(s, n, floor_key, double(rp.top_p) * double(total));
    if (pk > floor_key) floor_key = pk;
  }

  float best = -det::kInf;
  int64_t best_idx = -1;
  const uint32_t stream = rng::stream_id(rng::kSample, 0);
  for (int64_t v0 = 0; v0 < n; v0 += 4) {
    rng::U4 r{};
    bool have_r = false;
    for (int64_t v = v0; v < v0 + 4 && v < n; ++v) {
      if (s.keys[v] < floor_key) continue;
      const float sc = det::sub(s.scaled[v], m);
      if (!(sc >= -kGumbelPruneMargin)) continue;  // provably cannot beat the max element
      if (rp.min_p > 0.0f && det::exp(sc) < rp.min_p) continue;
      if (!have_r) {
        r = rng::raw4(rp.seed, rp.offset, stream, uint32_t(v0 >> 2));
        have_r = true;
      }
      const float g = gumbel_key(sc, rng::u32_to_uniform(rng::lane(r, uint32_t(v & 3))));
      if (better(g, v, best, best_idx)) { best = g; best_idx = v; }
    }
  }
  return best_idx;
}

}  // namespace

void sample_rows_cpu(const SampleParams& p, int64_t row_begin, int64_t row_end) {
  Scratch scratch;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t b = row_begin; b < row_end; ++b) p.out[b] = sample_row<T>(p, b, scratch);
  });
}

}  // namespace sampling
}  // namespace domino
