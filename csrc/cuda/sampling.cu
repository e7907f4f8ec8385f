// CUDA implementation of domino::sampling (semantics in domino/sampling.h).
//
// One thread block per row. Passes over the row (L2-resident after the first): validity + max,
// then the block row filter shared with domino::verify (row_filter.cuh: a 4-digit radix select
// for top-k (counts) and for top-p (fixed-point masses, integer atomics: exact and order
// independent)), then the Gumbel-max draw. No sort, no host sync, no
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

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  __shared__ cuda::ArgMax red_argmax[32];
  __shared__ uint32_t red_u32[32];
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
  int bad = 0, any = 0;
  cuda::ArgMax best{-det::kInf, -1};
  uint32_t max_key = 0;
  for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
    const float l = to_float(row[v]);
    bad |= det::is_nan(l) || l == det::kInf;
    any |= l > -det::kInf;
    if (rp.greedy) {
      if (l > best.key) best = cuda::ArgMax{l, int32_t(v)};  // strided loop: first hit is lowest
    } else {
      max_key = max(max_key, det::ordered_key(det::div(l, rp.temperature)));
    }
  }
  bad = __syncthreads_or(bad);
  any = __syncthreads_or(any);
  if (bad || !any) {
    if (threadIdx.x == 0) p.out[b] = -1;
    return;
  }
  if (rp.greedy) {
    best = cuda::block_argmax(best, red_argmax);
    if (threadIdx.x == 0) p.out[b] = best.idx;
    return;
  }
  max_key = cuda::block_max_u32(max_key, red_u32);
  const float m = det::key_to_float(max_key);
  if (!det::is_finite(m)) {
    if (threadIdx.x == 0) p.out[b] = -1;
    return;
  }

  const uint32_t floor_key =
      cuda::block_filter_floor(row, n, rp.temperature, m, rp.top_k, rp.top_p, filter_smem);

  // Gumbel-max over the kept set. Each thread owns groups of 4 consecutive indices so that one
  // Philox call serves 4 elements.
  const uint32_t stream = rng::stream_id(rng::kSample, 0);
  best = cuda::ArgMax{-det::kInf, -1};
  for (int64_t v0 = int64_t(threadIdx.x) * 4; v0 < n; v0 += int64_t(blockDim.x) * 4) {
    rng::U4 r{};
    bool have_r = false;
    for (int64_t v = v0; v < v0 + 4 && v < n; ++v) {
      const float s = scaled_logit(row, v, rp.temperature);
      if (det::ordered_key(s) < floor_key) continue;
      const float sc = det::sub(s, m);
      if (!(sc >= -kGumbelPruneMargin)) continue;
      if (rp.min_p > 0.0f && det::exp(sc) < rp.min_p) continue;
      if (!have_r) {
        r = rng::raw4(rp.seed, rp.offset, stream, uint32_t(v0 >> 2));
        have_r = true;
      }
      const float g = gumbel_key(sc, rng::u32_to_uniform(rng::lane(r, uint32_t(v & 3))));
      best = cuda::argmax_combine(best, cuda::ArgMax{g, int32_t(v)});
    }
  }
  best = cuda::block_argmax(best, red_argmax);
  if (threadIdx.x == 0) p.out[b] = best.idx;
}

}  // namespace

int sample_cuda(const SampleParams& p, void* stream) {
  if (p.batch == 0) return int(cudaSuccess);
  cudaError_t err = cudaSuccess;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    sample_kernel<T><<<dim3(unsigned(p.batch)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    err = cudaGetLastError();
  });
  return int(err);
}

}  // namespace sampling
}  // namespace domino
