// CPU implementation of domino::sampling (semantics in domino/sampling.h).
//
// One row at a time, in a few streaming passes: (1) validity and max, (2) top-k radix select over
// ordered keys, (3) exp and fixed-point masses of what top-k kept, top-p radix select over them,
// (4) the inverse-CDF draw over the kept set. Rows are independent; the binding layer spreads them
// over its thread pool.
#include <vector>

#include "domino/sampling.h"

namespace domino {
namespace sampling {
namespace {

struct Scratch {
  std::vector<float> scaled;   // s_v = l_v / T
  std::vector<uint32_t> keys;  // ordered_key(s_v)
  std::vector<float> expo;     // exp(s_v - m) for what top-k kept, else 0
  std::vector<uint64_t> mass;  // fixed_mass(expo), only when top-p is on
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
    const float sv = det::mul(l, rp.inv_temperature);
    s.scaled[v] = sv;
    const uint32_t k = det::ordered_key(sv);
    s.keys[v] = k;
    if (k > max_key) max_key = k;
  }
  const float m = det::key_to_float(max_key);
  if (!any || !det::is_finite(m)) return -1;

  uint32_t floor_key = 0;
  if (rp.top_k > 0) floor_key = kth_largest_key(s.keys, n, uint32_t(rp.top_k));
  s.expo.resize(n);
  for (int64_t v = 0; v < n; ++v)
    s.expo[v] = s.keys[v] >= floor_key ? det::exp(det::sub(s.scaled[v], m)) : 0.0f;
  if (rp.top_p < 1.0f) {
    s.mass.resize(n);
    uint64_t total = 0;
    for (int64_t v = 0; v < n; ++v) total += s.mass[v] = det::fixed_mass(s.expo[v]);
    const uint32_t pk = top_p_key(s, n, floor_key, double(rp.top_p) * double(total));
    if (pk > floor_key) floor_key = pk;
  }

  // Inverse CDF over the kept set: total mass, then the first index whose prefix exceeds r.
  auto kept_mass = [&](int64_t v) -> uint64_t {
    if (s.keys[v] < floor_key || s.expo[v] < rp.min_p) return 0;
    return det::fixed_mass(s.expo[v]);
  };
  uint64_t total = 0;
  for (int64_t v = 0; v < n; ++v) total += kept_mass(v);
  const uint64_t r = mass_rank(row_u64(rp.seed, rp.offset), total);
  uint64_t prefix = 0;
  for (int64_t v = 0; v < n; ++v) {
    prefix += kept_mass(v);
    if (prefix > r) return v;
  }
  return -1;  // unreachable: the max element always has mass 2^40 > 0
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
