// CPU implementation of domino::sampling (semantics in domino/sampling.h).
//
// One row at a time, in a few streaming passes: (1)-(3) the row filter shared with domino::verify
// (row_filter.h: validity and max, top-k radix select over ordered keys, exp and fixed-point
// masses of what top-k kept, top-p radix select over them), (4) the inverse-CDF draw over the
// kept set. Rows are independent; the binding layer spreads them over its thread pool.
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

  if (rp.greedy) return cpu::greedy_argmax(row, n);

  const cpu::FilteredRow fr = cpu::filter_row(row, n, rp.inv_temperature, rp.top_k, rp.top_p,
                                              /*want_mass=*/false, s);
  if (!fr.valid) return -1;
  const uint32_t floor_key = fr.floor_key;

  // Inverse CDF over the kept set: total mass, then the first index whose prefix exceeds r.
  auto kept_mass = [&](int64_t v) -> uint64_t {
    if (s.keys[v] < floor_key || s.expo[v] < rp.min_p) return 0;
    return det::fixed_mass(s.expo[v]);
  };
  uint64_t total = 0;
  for (int64_t v = 0; v < n; ++v) total += kept_mass(v);
  const uint64_t r = drawn_rank(rp.seed, rp.offset, total);
  uint64_t prefix = 0;
  for (int64_t v = 0; v < n; ++v) {
    prefix += kept_mass(v);
    if (prefix > r) return v;
  }
  return -1;  // unreachable: the max element always has mass 2^40 > 0
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
