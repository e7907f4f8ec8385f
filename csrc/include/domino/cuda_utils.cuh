// domino/cuda_utils.cuh: block-level building blocks shared by the CUDA kernels.
// Every reduction here is order-independent (integer sums, max, argmax with a total order), so
// results do not depend on the block size or on scheduling.
#pragma once

#include <cuda_runtime.h>

#include "domino/common.h"
#include "domino/numerics.h"

namespace domino {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// (key, index) argmax with ties to the lowest index; index -1 means "none".
struct ArgMax {
  float key;
  int32_t idx;
};

__device__ __forceinline__ ArgMax argmax_combine(ArgMax a, ArgMax b) {
  if (b.idx < 0) return a;
  if (a.idx < 0) return b;
  if (b.key > a.key || (b.key == a.key && b.idx < a.idx)) return b;
  return a;
}

__device__ __forceinline__ ArgMax warp_argmax(ArgMax v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax other;
    other.key = __shfl_xor_sync(kFullMask, v.key, o);
    other.idx = __shfl_xor_sync(kFullMask, v.idx, o);
    v = argmax_combine(v, other);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ uint32_t warp_max_u32(uint32_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide reductions. `scratch` must hold >= 32 elements; all threads get the result.
// The block size must be a multiple of 32.
__device__ __forceinline__ ArgMax block_argmax(ArgMax v, ArgMax* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_argmax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : ArgMax{0.0f, -1};
  v = warp_argmax(v);
  return v;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : T(0);
  return warp_sum(v);
}

__device__ __forceinline__ uint32_t block_max_u32(uint32_t v, uint32_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max_u32(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0u;
  return warp_max_u32(v);
}

// Exclusive prefix sum of one uint64 per thread, in thread order (exact: integer adds). `scratch`
// must hold >= 32 elements; `total` receives the block total in every thread.
__device__ __forceinline__ unsigned long long block_exclusive_scan_u64(unsigned long long v,
                                                                       unsigned long long* scratch,
                                                                       unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  unsigned long long incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long up = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    unsigned long long w = lane < nwarps ? scratch[lane] : 0ull;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long up = __shfl_up_sync(kFullMask, w, o);
      if (lane >= o) w += up;
    }
    if (lane < nwarps) scratch[lane] = w;  // inclusive scan of warp totals
  }
  __syncthreads();
  *total = scratch[nwarps - 1];
  const unsigned long long warp_before = warp ? scratch[warp - 1] : 0ull;
  return warp_before + incl - v;
}

}  // namespace cuda
}  // namespace domino
