// CUDA implementation of domino::verify (semantics in domino/verify.h).
//
// Small batches (the binding passes a workspace when batch <= kPrepassMaxBatch) first run a
// vocabulary-split pre-pass over every node row: (rows x vocabulary slices) blocks fold, with
// integer atomics (order independent, so exact), each row's argmax and validity flags (greedy),
// or its max scaled logit, flags and total mass W (stochastic rules; two phases). This spreads
// the vocabulary-sized work over the whole GPU even at batch 1: the greedy walk then reads one
// word per visited node, and the stochastic walk skips its max and mass passes (requests with
// top-k/top-p on still filter in the walk). Large batches skip it: one block per request already
// fills the GPU and reads only visited rows.
//
// The walk: one thread block per request. Every thread runs the shared walk (verify_request)
// redundantly; each question the walk asks about a row (validity and max, the top-k/top-p floor,
// the total mass, a residual total, an inverse-CDF position) is a block-collective pass over
// that row whose result reaches all threads, so control flow stays uniform and the decisions are
// those of the CPU kernel bit for bit (integer masses, domino::det float math, pinned double
// rounding). Without the pre-pass only the nodes on the accepted path (plus the final one) are
// read. No host sync, caller-owned workspace: the op can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include "domino/cuda_utils.cuh"
#include "domino/verify.h"
#include "row_filter.cuh"

namespace domino {
namespace verify {
namespace {

constexpr int kThreads = 512;
constexpr int kSplitThreads = 256;
constexpr int64_t kSplitElems = 2048;  // vocabulary entries per pre-pass block

constexpr uint64_t kFlagBad = 1, kFlagAny = 2;  // row has NaN/+inf; row has a logit > -inf

// Greedy pre-pass: block (row, slice) folds max over its slice of
//   (ordered_key(l) << 32) | (2^32 - 1 - v)
// (largest logit, then lowest index; -0 is folded to +0 so ties match the CPU's `l > best`) into
// keys[row] with atomicMax, and the row flags into flags[row] with atomicOr. Rows of nodes at or
// beyond num_nodes are not read.
template <typename T>
__global__ void __launch_bounds__(kSplitThreads) greedy_prepass_kernel(VerifyParams p) {
  const int64_t row_i = blockIdx.x;
  const int64_t b = row_i / p.nodes, node = row_i % p.nodes;
  if (node >= p.num_nodes[b]) return;
  const T* row =
      static_cast<const T*>(p.logits) + b * p.logits_stride_b + node * p.logits_stride_t;
  const int64_t lo = int64_t(blockIdx.y) * kSplitElems;
  const int64_t hi = min(p.vocab, lo + kSplitElems);
  unsigned long long best = 0, flags = 0;
  for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x) {
    const float l = to_float(row[v]);
    if (det::is_nan(l) || l == det::kInf) flags |= kFlagBad;
    if (!(l > -det::kInf)) continue;  // also skips NaN
    flags |= kFlagAny;
    const uint64_t key = (uint64_t(det::ordered_key(l == 0.0f ? 0.0f : l)) << 32) |
                         (0xffffffffu - uint32_t(v));
    best = max(best, (unsigned long long)key);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    best = max(best, __shfl_xor_sync(cuda::kFullMask, best, o));
    flags |= __shfl_xor_sync(cuda::kFullMask, flags, o);
  }
  if ((threadIdx.x & 31) == 0) {
    unsigned long long* keys = reinterpret_cast<unsigned long long*>(p.workspace);
    if (best) atomicMax(&keys[row_i], best);
    if (flags) atomicOr(&keys[p.batch * p.nodes + row_i], flags);
  }
}

// Stochastic pre-pass (rules 1-3), phase 1: per (row, slice), the max ordered key of the scaled
// logits (atomicMax) and the row flags (atomicOr). Rows of greedy (temperature 0) or invalid
// temperature requests, and of nodes at or beyond num_nodes, are skipped: the walk handles them.
__device__ __forceinline__ bool prepass_row(const VerifyParams& p, int64_t b, int64_t node) {
  const float t = p.temperature[b];
  return node < p.num_nodes[b] && t > 0.0f;  // false for NaN too
}

template <typename T>
__global__ void __launch_bounds__(kSplitThreads) max_prepass_kernel(VerifyParams p) {
  const int64_t row_i = blockIdx.x;
  const int64_t b = row_i / p.nodes, node = row_i % p.nodes;
  if (!prepass_row(p, b, node)) return;
  const float inv_t = det::div(1.0f, p.temperature[b]);
  const T* row =
      static_cast<const T*>(p.logits) + b * p.logits_stride_b + node * p.logits_stride_t;
  const int64_t lo = int64_t(blockIdx.y) * kSplitElems;
  const int64_t hi = min(p.vocab, lo + kSplitElems);
  uint32_t best = 0;
  unsigned long long flags = 0;
  for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x) {
    const float l = to_float(row[v]);
    if (det::is_nan(l) || l == det::kInf) flags |= kFlagBad;
    if (l > -det::kInf) flags |= kFlagAny;
    best = max(best, det::ordered_key(det::mul(l, inv_t)));
  }
  best = cuda::warp_max_u32(best);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) flags |= __shfl_xor_sync(cuda::kFullMask, flags, o);
  if ((threadIdx.x & 31) == 0) {
    unsigned long long* ws = reinterpret_cast<unsigned long long*>(p.workspace);
    atomicMax(&ws[row_i], (unsigned long long)best);
    if (flags) atomicOr(&ws[p.batch * p.nodes + row_i], flags);
  }
}

// Phase 2: per (row, slice), the row's unfiltered total mass W = sum fixed_mass(exp(s - m))
// (atomicAdd of integers: exact in any order). Only used by requests whose top-k/top-p are off.
template <typename T>
__global__ void __launch_bounds__(kSplitThreads) mass_prepass_kernel(VerifyParams p) {
  const int64_t row_i = blockIdx.x;
  const int64_t b = row_i / p.nodes, node = row_i % p.nodes;
  if (!prepass_row(p, b, node)) return;
  unsigned long long* ws = reinterpret_cast<unsigned long long*>(p.workspace);
  const int64_t rows = p.batch * p.nodes;
  const float m = det::key_to_float(uint32_t(ws[row_i]));
  if ((ws[rows + row_i] & kFlagBad) || !det::is_finite(m)) return;
  const float inv_t = det::div(1.0f, p.temperature[b]);
  const T* row =
      static_cast<const T*>(p.logits) + b * p.logits_stride_b + node * p.logits_stride_t;
  const int64_t lo = int64_t(blockIdx.y) * kSplitElems;
  const int64_t hi = min(p.vocab, lo + kSplitElems);
  unsigned long long w = 0;
  for (int64_t v = lo + threadIdx.x; v < hi; v += blockDim.x)
    w += det::fixed_mass(det::exp(det::sub(det::mul(to_float(row[v]), inv_t), m)));
  w = cuda::warp_sum(w);
  if ((threadIdx.x & 31) == 0 && w) atomicAdd(&ws[2 * rows + row_i], w);
}

struct Smem {
  cuda::FilterSmem filter;
  cuda::ArgMax red_argmax[32];
  uint32_t red_u32[32];
  unsigned long long red_u64[32];
  unsigned long long scan[32];
  long long found;
};

template <typename T>
struct CudaRow {
  const VerifyParams* p;
  int64_t b;
  Smem* sm;
  int64_t* kids;
  int64_t* kid_tok;
  double* scales;
  uint64_t* resid = nullptr;  // no per-vocabulary scratch: the walk recomputes R_j(v) (verify.h)
  int64_t* uniq = nullptr;
  const T* row = nullptr;
  float inv_temperature = 1.0f, m = 0.0f;  // 1/T rounded once, as domino::sample
  uint32_t floor_key = 0;
  uint64_t W = 0;
  int64_t best = -1;

  __device__ bool load(int64_t node, bool greedy) {
    if (greedy && p->workspace && p->rule == kGreedy) {  // the pre-pass did the work
      const int64_t i = b * p->nodes + node;
      const uint64_t flags = p->workspace[p->batch * p->nodes + i];
      if ((flags & kFlagBad) || !(flags & kFlagAny)) return false;
      best = int64_t(0xffffffffu - uint32_t(p->workspace[i] & 0xffffffffu));
      return true;
    }
    row = static_cast<const T*>(p->logits) + b * p->logits_stride_b + node * p->logits_stride_t;
    inv_temperature = det::div(1.0f, p->temperature[b]);
    const int64_t n = p->vocab;
    const int64_t top_k = p->top_k ? p->top_k[b] : 0;
    const float top_p = p->top_p ? p->top_p[b] : 1.0f;
    const bool filters_off = !(top_k > 0 && top_k < n) && !(top_p < 1.0f);
    if (!greedy && p->workspace && p->rule != kGreedy && filters_off) {  // pre-pass: m and W
      const int64_t rows = p->batch * p->nodes, i = b * p->nodes + node;
      const uint64_t flags = p->workspace[rows + i];
      if ((flags & kFlagBad) || !(flags & kFlagAny)) return false;
      m = det::key_to_float(uint32_t(p->workspace[i]));
      if (!det::is_finite(m)) return false;
      floor_key = 0;
      W = p->workspace[2 * rows + i];
      return true;
    }
    const cuda::RowScan scan =
        cuda::block_row_scan(row, n, greedy, inv_temperature, sm->red_argmax, sm->red_u32);
    if (!scan.ok) return false;
    if (greedy) {
      best = scan.argmax;
      return best >= 0;
    }
    m = scan.max_scaled;
    floor_key = cuda::block_filter_floor(row, n, inv_temperature, m, top_k, top_p, sm->filter);
    unsigned long long t = 0;
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) t += mass(v);
    W = cuda::block_sum(t, sm->red_u64);
    return true;
  }

  __device__ int64_t argmax() const { return best; }
  __device__ uint64_t total() const { return W; }

  __device__ uint64_t mass(int64_t v) const {
    const float s = det::mul(to_float(row[v]), inv_temperature);
    return det::ordered_key(s) >= floor_key ? det::fixed_mass(det::exp(det::sub(s, m))) : 0;
  }

  template <class F>
  __device__ uint64_t sum(const F& f) const {
    unsigned long long t = 0;
    for (int64_t v = threadIdx.x; v < p->vocab; v += blockDim.x) t += f(v);
    return cuda::block_sum(t, sm->red_u64);
  }

  // Smallest v with f(0) + ... + f(v) > r, as domino::sample draws: thread t sums f over its
  // contiguous slice, an exclusive block scan (integers: exact) finds the one slice holding r,
  // and its thread walks it. The answer is the CPU loop's, whatever the block size.
  template <class F>
  __device__ int64_t find(uint64_t r, const F& f) const {
    const int64_t n = p->vocab;
    const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
    const int64_t lo = min(n, int64_t(threadIdx.x) * chunk), hi = min(n, lo + chunk);
    unsigned long long mine = 0;
    for (int64_t v = lo; v < hi; ++v) mine += f(v);
    __syncthreads();  // every thread has read the previous call's answer before the reset
    if (threadIdx.x == 0) sm->found = -1;
    unsigned long long total;
    const unsigned long long before = cuda::block_exclusive_scan_u64(mine, sm->scan, &total);
    if (before <= r && r < before + mine) {  // exactly one thread owns rank r
      unsigned long long prefix = before;
      for (int64_t v = lo; v < hi; ++v) {
        prefix += f(v);
        if (prefix > r) {
          sm->found = v;
          break;
        }
      }
    }
    __syncthreads();
    return sm->found;
  }

  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sync() const { __syncthreads(); }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) verify_kernel(VerifyParams p) {
  __shared__ Smem sm;
  extern __shared__ __align__(16) unsigned char dyn[];  // kids, kid_tok: int64; scales: double
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

int verify_cuda(const VerifyParams& params, void* stream) {
  if (params.batch == 0) return int(cudaSuccess);
  if (params.nodes > kMaxNodes) return int(cudaErrorInvalidValue);
  // The pre-pass grid is (batch * nodes, vocabulary slices): skip it (the walk alone is exact)
  // when that exceeds the grid limits (gridDim.y <= 65535, i.e. vocab > ~134M; gridDim.x < 2^31)
  // instead of failing the launch.
  VerifyParams p = params;
  if ((p.vocab + kSplitElems - 1) / kSplitElems > 65535 || p.batch * p.nodes > 0x7fffffff)
    p.workspace = nullptr;
  const size_t dyn = size_t(p.nodes) * (2 * sizeof(int64_t) + sizeof(double));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool prepass = p.workspace != nullptr;
  cudaError_t err = cudaSuccess;
  if (prepass) {
    err = cudaMemsetAsync(p.workspace, 0, size_t(kWorkspaceWords * p.batch * p.nodes) *
                                              sizeof(uint64_t), s);
    if (err != cudaSuccess) return int(err);
  }
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (prepass) {
      const dim3 grid(unsigned(p.batch * p.nodes),
                      unsigned((p.vocab + kSplitElems - 1) / kSplitElems));
      if (p.rule == kGreedy) {
        greedy_prepass_kernel<T><<<grid, kSplitThreads, 0, s>>>(p);
      } else {
        max_prepass_kernel<T><<<grid, kSplitThreads, 0, s>>>(p);
        mass_prepass_kernel<T><<<grid, kSplitThreads, 0, s>>>(p);
      }
      err = cudaGetLastError();
      if (err != cudaSuccess) return;
    }
    verify_kernel<T><<<dim3(unsigned(p.batch)), kThreads, dyn, s>>>(p);
    err = cudaGetLastError();
  });
  return int(err);
}

}  // namespace verify
}  // namespace domino
