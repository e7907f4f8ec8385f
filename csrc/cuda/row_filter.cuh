// csrc/cuda/row_filter.cuh: the processed-target row filter for one thread block (temperature,
// top-k, top-p), shared by the domino::sample and domino::verify kernels so both apply exactly
// the definitions of domino/sampling.h, bit-identically to the CPU row filter (row_filter.h).
// Internal to the CUDA kernels (not an installed header).
#pragma once

#include <cuda_runtime.h>

#include "domino/cuda_utils.cuh"
#include "domino/sampling.h"

namespace domino {
namespace cuda {

// Shared-memory scratch of the block row filter.
struct FilterSmem {
  uint32_t hist32[256];
  unsigned long long hist64[256];
  unsigned long long red_u64[32];
  uint32_t word;
};

template <typename T>
__device__ __forceinline__ float scaled_logit(const T* row, int64_t v, float inv_temperature) {
  return det::mul(to_float(row[v]), inv_temperature);
}

// Pass 1 over a row: is it valid (no NaN or +inf, some logit > -inf), and then, for greedy, the
// argmax of the raw logits (ties to the lowest index), else the max of the scaled logits (a row
// whose max overflows is invalid). Every thread gets the result.
struct RowScan {
  bool ok;
  int32_t argmax;    // greedy only
  float max_scaled;  // sampling only
};

template <typename T>
__device__ RowScan block_row_scan(const T* row, int64_t n, bool greedy, float inv_temperature,
                                  ArgMax* red_argmax, uint32_t* red_u32) {
  int bad = 0, any = 0;
  ArgMax best{-det::kInf, -1};
  uint32_t max_key = 0;
  for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
    const float l = to_float(row[v]);
    bad |= det::is_nan(l) || l == det::kInf;
    any |= l > -det::kInf;
    if (greedy) {
      if (l > best.key) best = ArgMax{l, int32_t(v)};  // strided loop: first hit is lowest
    } else {
      max_key = max(max_key, det::ordered_key(det::mul(l, inv_temperature)));
    }
  }
  bad = __syncthreads_or(bad);
  any = __syncthreads_or(any);
  RowScan r{!bad && any, -1, 0.0f};
  if (!r.ok) return r;
  if (greedy) {
    r.argmax = block_argmax(best, red_argmax).idx;
  } else {
    r.max_scaled = det::key_to_float(block_max_u32(max_key, red_u32));
    r.ok = det::is_finite(r.max_scaled);
  }
  return r;
}

// MSB-first radix select of the k-th largest ordered key of the scaled row.
template <typename T>
__device__ uint32_t block_kth_largest_key(const T* row, int64_t n, float inv_temperature,
                                          uint32_t k, FilterSmem& sm) {
  uint32_t prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sm.hist32[i] = 0;
    __syncthreads();
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
      const uint32_t key = det::ordered_key(scaled_logit(row, v, inv_temperature));
      if ((key & mask) == prefix) atomicAdd(&sm.hist32[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    // `remaining` is only meaningful in thread 0, which is the only one that reads it.
    if (threadIdx.x == 0)
      sm.word = uint32_t(sampling::select_bucket_by_count(sm.hist32, remaining));
    __syncthreads();
    prefix |= sm.word << shift;
    mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

// Largest key t with mass({key >= max(t, floor_key)}) >= target (integer masses: exact).
template <typename T>
__device__ uint32_t block_top_p_key(const T* row, int64_t n, float inv_temperature, float m,
                                    uint32_t floor_key, double target, FilterSmem& sm) {
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sm.hist64[i] = 0;
    __syncthreads();
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
      const float s = scaled_logit(row, v, inv_temperature);
      const uint32_t key = det::ordered_key(s);
      if (key >= floor_key && (key & mask) == prefix) {
        const uint64_t w = det::fixed_mass(det::exp(det::sub(s, m)));
        if (w) atomicAdd(&sm.hist64[(key >> shift) & 255u], (unsigned long long)w);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0)
      sm.word = uint32_t(sampling::select_bucket_by_mass(
          reinterpret_cast<const uint64_t*>(sm.hist64), above, target));
    __syncthreads();
    prefix |= sm.word << shift;
    mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

// The kept set's floor key after top-k (0 < top_k < n) and top-p (top_p < 1); 0 = keep all.
// `m` is the max scaled logit (finite). Every thread gets the result.
template <typename T>
__device__ uint32_t block_filter_floor(const T* row, int64_t n, float inv_temperature, float m,
                                       int64_t top_k, float top_p, FilterSmem& sm) {
  uint32_t floor_key = 0;
  if (top_k > 0 && top_k < n)
    floor_key = block_kth_largest_key(row, n, inv_temperature, uint32_t(top_k), sm);
  if (top_p < 1.0f) {
    unsigned long long total = 0;
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
      const float s = scaled_logit(row, v, inv_temperature);
      if (det::ordered_key(s) >= floor_key) total += det::fixed_mass(det::exp(det::sub(s, m)));
    }
    total = block_sum(total, sm.red_u64);
    const uint32_t pk = block_top_p_key(row, n, inv_temperature, m, floor_key,
                                        double(top_p) * double(total), sm);
    if (pk > floor_key) floor_key = pk;
  }
  return floor_key;
}

}  // namespace cuda
}  // namespace domino
