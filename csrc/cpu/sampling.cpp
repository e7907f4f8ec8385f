// CPU implementation of domino::sampling (semantics in domino/sampling.h).
//
// One row at a time, in a few streaming passes: (1)-(3) the shared row filter (row_filter.h:
// validity and max, top-k radix select over ordered keys, top-p radix select over fixed-point
// masses), (4) the Gumbel-max draw over the kept set. Rows are independent; the binding layer spreads
// them over its thread pool.
#include "domino/sampling.h"
#include "row_filter.h"

namespace domino {
namespace sampling {
namespace {

template <typename T>
int64_t sample_row(const SampleParams& p, int64_t b, cpu::RowScratch& s) {
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

  const cpu::FilteredRow fr = cpu::filter_row(row, n, rp.temperature, rp.top_k, rp.top_p,
                                              /*want_mass=*/false, s);
  if (!fr.valid) return -1;
  const float m = fr.m;
  const uint32_t floor_key = fr.floor_key;

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
  cpu::RowScratch scratch;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t b = row_begin; b < row_end; ++b) p.out[b] = sample_row<T>(p, b, scratch);
  });
}

}  // namespace sampling
}  // namespace domino
