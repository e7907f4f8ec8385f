// CUDA implementation of domino::sampling (semantics in domino/sampling.h).
//
// One thread block per row. Passes over the row (L2-resident after the first): validity + max,
// then the block row filter shared with domino::verify (row_filter.cuh: a 4-digit radix select
// for top-k (counts) and for top-p (fixed-point masses, integer atomics: exact and order
// independent)), then the inverse-CDF draw: every thread sums the kept
// mass of its own contiguous slice, an exclusive block scan (integers: exact) locates the slice
// holding the drawn rank, and that one thread walks its slice. No sort, no host sync, no
// workspace: the op is CUDA-graph safe. Per-element math goes through domino::det and the shared
// helpers in sampling.h, so tokens are bit-identical to the CPU kernel.
#include <cuda_runtime.h>

#include "domino/cuda_utils.cuh"
#include "domino/sampling.h"
#include "row_filter.cuh"

namespace domino {
namespace sampling {
namespace {

constexpr int kThreads = 512;

using cuda::scaled_logit;

// Fixed-point mass of element v in the kept set (0 outside it); the CPU computes the same.
template <typename T>
__device__ __forceinline__ uint64_t kept_mass(const T* row, int64_t v, const RowParams& rp,
                                              float m, uint32_t floor_key) {
  const float s = scaled_logit(row, v, rp.inv_temperature);
  if (det::ordered_key(s) < floor_key) return 0;
  const float e = det::exp(det::sub(s, m));
  return e < rp.min_p ? 0 : det::fixed_mass(e);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  __shared__ cuda::ArgMax red_argmax[32];
  __shared__ uint32_t red_u32[32];
  __shared__ unsigned long long red_u64[32];
  __shared__ cuda::FilterSmem filter_smem;

  const int64_t b = blockIdx.x;
  const RowParams rp = row_params(p, b);
  if (!rp.valid) {
    if (threadIdx.x == 0) p.out[b] = -1;
    return;
  }
  const T* row = static_cast<const T*>(p.logits) + b * p.row_stride;
  const int64_t n = p.vocab;

  // Pass 1: validity, and the max (greedy: argmax of raw logits; else max of scaled logits).
  const cuda::RowScan scan =
      cuda::block_row_scan(row, n, rp.greedy, rp.inv_temperature, red_argmax, red_u32);
  if (!scan.ok || rp.greedy) {
    if (threadIdx.x == 0) p.out[b] = scan.ok ? scan.argmax : -1;
    return;
  }
  const float m = scan.max_scaled;

  const uint32_t floor_key =
      cuda::block_filter_floor(row, n, rp.inv_temperature, m, rp.top_k, rp.top_p, filter_smem);

  // Inverse CDF: thread t owns the contiguous slice [t*chunk, (t+1)*chunk).
  const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
  const int64_t lo = min(n, int64_t(threadIdx.x) * chunk), hi = min(n, lo + chunk);
  unsigned long long mine = 0;
  for (int64_t v = lo; v < hi; ++v) mine += kept_mass(row, v, rp, m, floor_key);
  unsigned long long total;
  const unsigned long long before = cuda::block_exclusive_scan_u64(mine, red_u64, &total);
  const uint64_t r = drawn_rank(rp.seed, rp.offset, total);
  if (before <= r && r < before + mine) {  // exactly one thread owns the drawn rank
    uint64_t prefix = before;
    for (int64_t v = lo; v < hi; ++v) {
      prefix += kept_mass(row, v, rp, m, floor_key);
      if (prefix > r) {
        p.out[b] = v;
        break;
      }
    }
  }
}

}  // namespace

int sample_cuda(const SampleParams& p, void* stream) {
  if (p.batch == 0) return int(cudaSuccess);
  cudaError_t err = cudaSuccess;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    sample_kernel<T>
        <<<dim3(unsigned(p.batch)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    err = cudaGetLastError();
  });
  return int(err);
}

}  // namespace sampling
}  // namespace domino
