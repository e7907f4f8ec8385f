// domino/sampling.h: sampling one token per row from logits, with temperature, top-k, top-p and
// min-p applied exactly. This header is the contract; reference/sampling.py is its executable spec.
//
// Semantics per row b (all decisions are made on fp32 values computed with domino::det and on
// exact integer sums, so the CPU and CUDA kernels take identical decisions):
//   temperature T == 0: greedy, argmax of the raw logits, ties to the lowest index.
//   T > 0:  s_v = l_v * (1/T) (1/T rounded once), m = max_v s_v, e_v = exp(s_v - m),
//           w_v = fixed_mass(e_v) = trunc(e_v * 2^40) (integer probability mass).
//     top-k (0 < k < V): keep s_v >= the k-th largest s (ties at that value are all kept).
//     top-p (p < 1):     over what top-k kept, keep s_v >= t*, where t* is the largest value such
//                        that sum of w over {s >= t*} >= p * sum of w (integer sums: exact).
//     min-p (q > 0):     keep e_v >= q (i.e. prob_v >= q * prob_max).
//     sample: inverse CDF over the kept set in index order with the integer masses:
//             W = sum of kept w, r = floor(U * W / 2^64) with U the 64-bit Philox word pair of
//             (seed_b, offset_b, stream(kSample, 0), block 0); the token is the first index whose
//             inclusive prefix mass exceeds r. Exact for the fixed-point weights (relative
//             quantisation 2^-40 of the largest probability; tokens with e_v < 2^-40 get mass 0).
//   A row is invalid, and its token is -1, when: a logit is NaN or +inf, no logit is > -inf,
//   T < 0 or NaN, k < 0, p not in (0, 1], q not in [0, 1], or the largest scaled logit overflows.
//   The binding layer raises on these for CPU tensors; on CUDA the -1 is the defined result.
#pragma once

#include "domino/common.h"
#include "domino/numerics.h"
#include "domino/philox.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace domino {
namespace sampling {

// Largest supported vocabulary: row masses are sums of up to V fixed-point masses <= 2^40 in a
// uint64, exact (never wrapping) for V <= 2^23.
constexpr int64_t kMaxVocab = int64_t(1) << 23;

struct SampleParams {
  const void* logits = nullptr;  // [batch, vocab], row stride `row_stride` elements, unit col stride
  DType dtype = DType::F32;
  int64_t batch = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;
  const float* temperature = nullptr;  // [batch]
  const int64_t* top_k = nullptr;      // [batch] or null (no top-k)
  const float* top_p = nullptr;        // [batch] or null (no top-p)
  const float* min_p = nullptr;        // [batch] or null (no min-p)
  const int64_t* seed = nullptr;       // [batch]
  const int64_t* offset = nullptr;     // [batch]
  int64_t* out = nullptr;              // [batch]
};

// The mass rank in [0, total) that the row's inverse-CDF draw looks up.
DOMINO_HD uint64_t drawn_rank(uint64_t seed, uint64_t offset, uint64_t total) {
  return rng::uniform_below(rng::random_u64(seed, offset, rng::stream_id(rng::kSample, 0)), total);
}

// Per-row parameters, validated. `valid == false` means the row's token is -1.
struct RowParams {
  bool valid;
  bool greedy;
  float temperature;
  float inv_temperature;  // 1/T rounded once: s_v = l_v * inv_temperature
  int64_t top_k;   // 0 = off
  float top_p;     // 1 = off
  float min_p;     // 0 = off
  uint64_t seed;
  uint64_t offset;
};

DOMINO_HD RowParams row_params(const SampleParams& p, int64_t b) {
  RowParams r;
  r.temperature = p.temperature[b];
  r.top_k = p.top_k ? p.top_k[b] : 0;
  r.top_p = p.top_p ? p.top_p[b] : 1.0f;
  r.min_p = p.min_p ? p.min_p[b] : 0.0f;
  r.seed = uint64_t(p.seed[b]);
  r.offset = uint64_t(p.offset[b]);
  r.valid = !(det::is_nan(r.temperature) || r.temperature < 0.0f || r.top_k < 0 ||
              det::is_nan(r.top_p) || !(r.top_p > 0.0f && r.top_p <= 1.0f) ||
              det::is_nan(r.min_p) || !(r.min_p >= 0.0f && r.min_p <= 1.0f));
  r.greedy = r.temperature == 0.0f;
  r.inv_temperature = r.greedy ? 0.0f : det::div(1.0f, r.temperature);
  if (r.top_k >= p.vocab) r.top_k = 0;
  return r;
}

// Radix-select helpers (MSB-first, 8-bit digits over det::ordered_key). Shared by the CPU loop
// and the CUDA block so both walk the buckets identically.
//
// Bucket holding the `remaining`-th largest key (1-based); updates `remaining` to the rank inside
// the chosen bucket.
DOMINO_HD int select_bucket_by_count(const uint32_t* hist, uint32_t& remaining) {
  for (int bin = 255; bin > 0; --bin) {
    if (hist[bin] >= remaining) return bin;
    remaining -= hist[bin];
  }
  return 0;
}

// Bucket where the running mass (from the top) first reaches `target`; `above` is the mass of keys
// above the current prefix and is updated to the mass above the chosen bucket.
DOMINO_HD int select_bucket_by_mass(const uint64_t* hist, uint64_t& above, double target) {
  for (int bin = 255; bin > 0; --bin) {
    if (double(above + hist[bin]) >= target) return bin;
    above += hist[bin];
  }
  return 0;
}

// CPU: sample rows [row_begin, row_end). Thread-safe for disjoint row ranges; the binding layer
// parallelises over rows with its own thread pool.
void sample_rows_cpu(const SampleParams& p, int64_t row_begin, int64_t row_end);

#if defined(DOMINO_WITH_CUDA) || defined(__CUDACC__)
// CUDA: one launch for the whole batch on `stream`. Returns cudaSuccess or the launch error.
int sample_cuda(const SampleParams& p, void* stream);
#endif

}  // namespace sampling
}  // namespace domino
