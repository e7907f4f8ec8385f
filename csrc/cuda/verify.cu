// CUDA implementation of domino::verify (semantics in domino/verify.h).
//
// One thread block per request. Every thread runs the shared walk (verify_request) redundantly;
// each question the walk asks about a row (validity and max, the top-k/top-p floor, the total
// mass, a residual total, an inverse-CDF position) is a block-collective pass over that row whose
// result reaches all threads, so control flow stays uniform and the decisions are those of the
// CPU kernel bit for bit (integer masses, domino::det float math, pinned double rounding). Only
// the nodes on the accepted path (plus the final one) are read. No workspace, no host sync: the
// op can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include "domino/cuda_utils.cuh"
#include "domino/verify.h"
#include "row_filter.cuh"

namespace domino {
namespace verify {
namespace {

constexpr int kThreads = 512;

struct Smem {
  cuda::FilterSmem filter;
  cuda::ArgMax red_argmax[32];
  uint32_t red_u32[32];
  unsigned long long red_u64[32];
  unsigned long long scan[32];
  long long found;
};

// Inclusive prefix sum over the block (all threads); `total` gets the block sum.
__device__ __forceinline__ unsigned long long block_inclusive_scan(unsigned long long x,
                                                                   unsigned long long* scratch,
                                                                   unsigned long long& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(cuda::kFullMask, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  unsigned long long before = 0;
  total = 0;
  for (int w = 0; w < nwarps; ++w) {
    if (w < warp) before += scratch[w];
    total += scratch[w];
  }
  return x + before;
}

template <typename T>
struct CudaRow {
  const VerifyParams* p;
  int64_t b;
  Smem* sm;
  int64_t* kids;
  int64_t* kid_tok;
  double* scales;
  const T* row = nullptr;
  float temperature = 1.0f, m = 0.0f;
  uint32_t floor_key = 0;
  uint64_t W = 0;
  int64_t best = -1;

  __device__ bool load(int64_t node, bool greedy) {
    row = static_cast<const T*>(p->logits) + b * p->logits_stride_b + node * p->logits_stride_t;
    temperature = p->temperature[b];
    const int64_t n = p->vocab;
    int bad = 0, any = 0;
    cuda::ArgMax am{-det::kInf, -1};
    uint32_t max_key = 0;
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) {
      const float l = to_float(row[v]);
      bad |= det::is_nan(l) || l == det::kInf;
      any |= l > -det::kInf;
      if (greedy) {
        if (l > am.key) am = cuda::ArgMax{l, int32_t(v)};  // strided loop: first hit is lowest
      } else {
        max_key = max(max_key, det::ordered_key(det::div(l, temperature)));
      }
    }
    bad = __syncthreads_or(bad);
    any = __syncthreads_or(any);
    if (bad || !any) return false;
    if (greedy) {
      am = cuda::block_argmax(am, sm->red_argmax);
      best = am.idx;
      return best >= 0;
    }
    max_key = cuda::block_max_u32(max_key, sm->red_u32);
    m = det::key_to_float(max_key);
    if (!det::is_finite(m)) return false;
    const int64_t top_k = p->top_k ? p->top_k[b] : 0;
    const float top_p = p->top_p ? p->top_p[b] : 1.0f;
    floor_key = cuda::block_filter_floor(row, n, temperature, m, top_k, top_p, sm->filter);
    unsigned long long t = 0;
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) t += mass(v);
    W = cuda::block_sum(t, sm->red_u64);
    return true;
  }

  __device__ int64_t argmax() const { return best; }
  __device__ uint64_t total() const { return W; }

  __device__ uint64_t mass(int64_t v) const {
    const float s = det::div(to_float(row[v]), temperature);
    return det::ordered_key(s) >= floor_key ? det::fixed_mass(det::exp(det::sub(s, m))) : 0;
  }

  template <class F>
  __device__ uint64_t sum(const F& f) const {
    unsigned long long t = 0;
    for (int64_t v = threadIdx.x; v < p->vocab; v += blockDim.x) t += f(v);
    return cuda::block_sum(t, sm->red_u64);
  }

  // Smallest v with f(0) + ... + f(v) > r: chunks of blockDim elements in index order, a block
  // scan per chunk; the integer prefix sums are exact, so the answer is the CPU loop's.
  template <class F>
  __device__ int64_t find(uint64_t r, const F& f) const {
    __syncthreads();  // every thread has read the previous call's answer before the reset
    if (threadIdx.x == 0) sm->found = -1;
    unsigned long long base = 0;
    for (int64_t c0 = 0; c0 < p->vocab; c0 += blockDim.x) {
      const int64_t v = c0 + threadIdx.x;
      const unsigned long long x = v < p->vocab ? f(v) : 0;
      unsigned long long chunk = 0;
      const unsigned long long incl = block_inclusive_scan(x, sm->scan, chunk);
      if (x > 0 && base + incl > r && base + incl - x <= r) sm->found = v;  // exactly one thread
      __syncthreads();
      const long long hit = sm->found;
      if (hit >= 0) return hit;
      base += chunk;
    }
    return -1;
  }

  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sync() const { __syncthreads(); }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) verify_kernel(VerifyParams p) {
  __shared__ Smem sm;
  extern __shared__ unsigned char dyn[];  // kids, kid_tok [nodes] int64; scales [nodes] double
  CudaRow<T> row;
  row.p = &p;
  row.b = blockIdx.x;
  row.sm = &sm;
  row.kids = reinterpret_cast<int64_t*>(dyn);
  row.kid_tok = row.kids + p.nodes;
  row.scales = reinterpret_cast<double*>(row.kid_tok + p.nodes);
  verify_request(p, int64_t(blockIdx.x), row);
}

}  // namespace

int verify_cuda(const VerifyParams& p, void* stream) {
  if (p.batch == 0) return int(cudaSuccess);
  if (p.nodes > kMaxNodes) return int(cudaErrorInvalidValue);
  const size_t dyn = size_t(p.nodes) * (2 * sizeof(int64_t) + sizeof(double));
  cudaError_t err = cudaSuccess;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    verify_kernel<T><<<dim3(unsigned(p.batch)), kThreads, dyn, static_cast<cudaStream_t>(stream)>>>(p);
    err = cudaGetLastError();
  });
  return int(err);
}

}  // namespace verify
}  // namespace domino
