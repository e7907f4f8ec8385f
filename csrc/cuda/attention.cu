// CUDA implementation of domino::attention (semantics in domino/attention.h).
//
// tree_attention: one CTA per (row tile of a request, KV head, key split). A row tile holds up to
// 64 query rows (token-major: every head of the GQA group for consecutive new tokens), so each
// 32-key block of K/V is read from the paged cache once and used by all of the group's query
// heads and new tokens. Per block: the CTA gathers K and V (fp32 in shared memory), each warp
// scores its rows (lane = key, float4 dot products over shared memory), applies the mask (only
// for keys that are new tokens), updates the online softmax, and accumulates P V with lanes over
// head dims. When the grid would not fill the GPU (short queries, long prefixes), the keys of
// every tile are split over several CTAs (split-KV, decode style) whose partial (out, lse) are
// merged by a second kernel. Arithmetic is fp32 on CUDA cores (no tensor cores yet).
//
// No host sync and no device value trusted: request spans, block-table entries and mask words are
// clamped/checked in the kernel (defined results in attention.h), so the op is graph capturable.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "domino/attention.h"
#include "domino/cuda_utils.cuh"

namespace domino {
namespace attention {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKeyBlock = 32;  // keys per block: one per lane when scoring
constexpr int kMaxSplits = 32;
constexpr float kNegInf = -det::kInf;

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(cuda::kFullMask, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(cuda::kFullMask, v, o);
  return v;
}

// DPL = head dims per lane (head_dim <= 32 * DPL), RPW = query rows per warp.
template <int DPL, int RPW>
struct Tile {
  static constexpr int kDMax = 32 * DPL;
  static constexpr int kRows = kWarps * RPW;
  static constexpr int kKStride = kDMax + 4;  // float4-aligned, conflict-free lane-per-key reads
  static constexpr size_t kSmemFloats =
      size_t(kRows) * kDMax + size_t(kKeyBlock) * kKStride + size_t(kKeyBlock) * kDMax;
};

// Element offsets of key position `pos` (of request b, KV head kvh) in the K and V caches, or -1
// for both when pos >= end or its page is unbacked (page_of rejects bad block-table values).
__device__ __forceinline__ void key_offsets(const PagedKV& kv, int64_t b, int64_t kvh, int64_t pos,
                                            int64_t end, int64_t& k_off, int64_t& v_off) {
  const int64_t page = pos < end ? page_of(kv, b, pos) : -1;
  const int64_t slot = pos % kv.page_size;
  k_off = page < 0 ? -1
                   : cache_offset(page, slot, kvh, kv.k_page_stride, kv.k_slot_stride,
                                  kv.k_head_stride);
  v_off = page < 0 ? -1
                   : cache_offset(page, slot, kvh, kv.v_page_stride, kv.v_slot_stride,
                                  kv.v_head_stride);
}

// The work of one CTA: which request and row tile (tiles are numbered request after request,
// `rows_per_tile` rows of (new token x group head) each), which KV head (blockIdx.y), and which
// slice [k_lo, k_hi) of the visible keys (key split blockIdx.z, aligned to `key_block`).
// b = -1 when the CTA has no tile (the grid is an upper bound).
struct TileWork {
  int64_t b, kvh, split, r0, r1, k_lo, k_hi;
  RequestSpan span;
};

__device__ __forceinline__ TileWork locate_tile(const AttentionParams& p, int64_t G,
                                                int64_t rows_per_tile, int64_t key_block,
                                                int64_t num_splits) {
  int64_t x = blockIdx.x, b = 0;
  RequestSpan span{0, 0, 0};
  for (; b < p.batch; ++b) {
    span = request_span(p.kv_lens, p.q_cu_lens, p.total_q, b);
    const int64_t tiles = (span.n_new * G + rows_per_tile - 1) / rows_per_tile;
    if (x < tiles) break;
    x -= tiles;
  }
  TileWork w{-1, 0, 0, 0, 0, 0, 0, span};
  if (b >= p.batch) return w;
  w.b = b;
  w.kvh = blockIdx.y;
  w.split = blockIdx.z;
  w.r0 = x * rows_per_tile;
  w.r1 = imin(span.n_new * G, w.r0 + rows_per_tile);
  const int64_t capacity = p.kv.max_pages * p.kv.page_size;
  const int64_t key_end = imin(capacity, key_end_for_token(p.mask_mode, span, (w.r1 - 1) / G));
  const int64_t chunk =
      ((key_end + num_splits - 1) / num_splits + key_block - 1) / key_block * key_block;
  w.k_lo = imin(key_end, w.split * chunk);
  w.k_hi = imin(key_end, (w.split + 1) * chunk);
  return w;
}

template <typename T, int DPL, int RPW>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(AttentionParams p, int64_t num_splits, float* ws_out, float* ws_lse) {
  using TileT = Tile<DPL, RPW>;
  constexpr int kDMax = TileT::kDMax, kRows = TileT::kRows, kKStride = TileT::kKStride;
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);
  float* Ks = Qs + kRows * kDMax;
  float* Vs = Ks + kKeyBlock * kKStride;
  __shared__ int64_t k_off[kKeyBlock], v_off[kKeyBlock];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t Hq = p.num_q_heads, D = p.head_dim;
  const int64_t G = Hq / p.kv.num_kv_heads;

  const TileWork w = locate_tile(p, G, kRows, kKeyBlock, num_splits);
  if (w.b < 0) return;  // the grid is an upper bound on the number of tiles
  const int64_t b = w.b, kvh = w.kvh, r0 = w.r0, r1 = w.r1, k_lo = w.k_lo, k_hi = w.k_hi;
  const RequestSpan span = w.span;

  // Query rows of the tile, pre-scaled, zero-padded to kDMax (and zero for rows past the tile).
  const T* q = static_cast<const T*>(p.q);
  for (int e = tid; e < kRows * kDMax; e += kThreads) {
    const int r = e / kDMax, d = e % kDMax;
    const int64_t rr = r0 + r;
    float v = 0.0f;
    if (rr < r1 && d < D) {
      const int64_t i = rr / G, head = kvh * G + rr % G;
      v = to_float(q[(span.q_begin + i) * p.q_tok_stride + head * p.q_head_stride + d]) * p.scale;
    }
    Qs[e] = v;
  }

  float o[RPW][DPL], m[RPW], l[RPW];
  bool bad[RPW];  // a visible score was NaN or +inf (finish_row)
#pragma unroll
  for (int k = 0; k < RPW; ++k) {
    bad[k] = false;
    m[k] = kNegInf;
    l[k] = 0.0f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) o[k][dd] = 0.0f;
  }

  const T* kc = static_cast<const T*>(p.kv.k);
  const T* vc = static_cast<const T*>(p.kv.v);
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += kKeyBlock) {
    __syncthreads();  // the previous block is consumed (and Qs is written, first time round)
    if (tid < kKeyBlock) {
      key_offsets(p.kv, b, kvh, k0 + tid, k_hi, k_off[tid], v_off[tid]);
    }
    __syncthreads();
    for (int e = tid; e < kKeyBlock * kDMax; e += kThreads) {
      const int j = e / kDMax, d = e % kDMax;
      const int64_t ko = k_off[j];
      float kv_k = 0.0f, kv_v = 0.0f;
      if (ko >= 0 && d < D) {
        kv_k = to_float(kc[ko + d]);
        kv_v = to_float(vc[v_off[j] + d]);
      }
      Ks[j * kKStride + d] = kv_k;
      Vs[j * kDMax + d] = kv_v;
    }
    __syncthreads();

    // Scores: lane = key j of the block, RPW rows of this warp.
    float s[RPW];
#pragma unroll
    for (int k = 0; k < RPW; ++k) s[k] = 0.0f;
    const float4* krow = reinterpret_cast<const float4*>(Ks + lane * kKStride);
#pragma unroll 4
    for (int d4 = 0; d4 < kDMax / 4; ++d4) {
      const float4 kk = krow[d4];
#pragma unroll
      for (int k = 0; k < RPW; ++k) {
        const float4 qq = reinterpret_cast<const float4*>(Qs + (warp * RPW + k) * kDMax)[d4];
        s[k] = fmaf(qq.x, kk.x, s[k]);
        s[k] = fmaf(qq.y, kk.y, s[k]);
        s[k] = fmaf(qq.z, kk.z, s[k]);
        s[k] = fmaf(qq.w, kk.w, s[k]);
      }
    }

    // Mask and online softmax (each row is warp-uniform, so are the branches below).
    const int64_t pos = k0 + lane;
    const bool key_ok = k_off[lane] >= 0;
    const bool is_new = pos >= span.kv_len;
#pragma unroll
    for (int k = 0; k < RPW; ++k) {
      const int64_t rr = r0 + warp * RPW + k;
      bool vis = key_ok && rr < r1;
      if (vis && is_new) {
        const int64_t i = rr / G;
        vis = new_token_visible(p.mask_mode, p.tree_mask, p.mask_words, span.q_begin + i, i,
                                pos - span.kv_len);
      }
      const float sk = vis ? s[k] : kNegInf;
      if (__any_sync(cuda::kFullMask, vis && bad_score(s[k]))) bad[k] = true;
      const float m_new = fmaxf(m[k], warp_max_f(sk));
      const float pk = m_new == kNegInf ? 0.0f : expf(sk - m_new);
      const float alpha = m[k] == kNegInf ? 0.0f : expf(m[k] - m_new);
      l[k] = l[k] * alpha + warp_sum_f(pk);
      m[k] = m_new;
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) o[k][dd] *= alpha;
      s[k] = pk;
    }

    // O += P V: lanes over head dims, P broadcast from the lane that owns each key.
#pragma unroll 4
    for (int j = 0; j < kKeyBlock; ++j) {
      float vv[DPL];
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) vv[dd] = Vs[j * kDMax + lane + 32 * dd];
#pragma unroll
      for (int k = 0; k < RPW; ++k) {
        const float pj = __shfl_sync(cuda::kFullMask, s[k], j);
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) o[k][dd] = fmaf(pj, vv[dd], o[k][dd]);
      }
    }
  }

  // Normalise and write: the output directly, or this split's partial slot.
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int k = 0; k < RPW; ++k) {
    const int64_t rr = r0 + warp * RPW + k;
    if (rr >= r1) continue;
    const int64_t i = rr / G, head = kvh * G + rr % G;
    const int64_t row = (span.q_begin + i) * Hq + head;
    const RowFinish fin = finish_row(m[k], l[k], bad[k]);
    const float inv = fin.inv, lse = fin.lse;
    if (num_splits > 1) {
      const int64_t slot = w.split * p.total_q * Hq + row;
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) {
        const int64_t d = lane + 32 * dd;
        if (d < D) ws_out[slot * D + d] = o[k][dd] * inv;
      }
      if (lane == 0) ws_lse[slot] = lse;
    } else {
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) {
        const int64_t d = lane + 32 * dd;
        if (d < D) out[row * D + d] = from_float<T>(o[k][dd] * inv);
      }
      if (lane == 0 && p.lse) p.lse[row] = lse;
    }
  }
}

// Merges the split partials of every (token, head) row: one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(AttentionParams p, int64_t num_splits, const float* ws_out, const float* ws_lse) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t Hq = p.num_q_heads, D = p.head_dim, stride = p.total_q * Hq;
  if (row >= stride) return;
  T* out = static_cast<T*>(p.out) + row * D;
  // Rows outside every request (malformed q_cu_lens) were never computed: zeros and -inf.
  const bool owned =
      request_of_row(p.kv_lens, p.q_cu_lens, p.batch, p.total_q, row / Hq) >= 0;
  float mx = kNegInf;
  bool nan = false;  // a split's row was undefined (finish_row): so is the merged row
  if (owned)
    for (int64_t s = 0; s < num_splits; ++s) {
      mx = fmaxf(mx, ws_lse[s * stride + row]);
      nan = nan || det::is_nan(ws_lse[s * stride + row]);
    }
  if (nan) {
    const float q_nan = bits_to_float(0x7fc00000u);
    for (int64_t d = lane; d < D; d += 32) out[d] = from_float<T>(q_nan);
    if (lane == 0 && p.lse) p.lse[row] = q_nan;
    return;
  }
  if (mx == kNegInf) {
    for (int64_t d = lane; d < D; d += 32) out[d] = from_float<T>(0.0f);
    if (lane == 0 && p.lse) p.lse[row] = kNegInf;
    return;
  }
  float total = 0.0f;
  for (int64_t s = 0; s < num_splits; ++s) total += expf(ws_lse[s * stride + row] - mx);
  for (int64_t d = lane; d < D; d += 32) {
    float acc = 0.0f;
    for (int64_t s = 0; s < num_splits; ++s) {
      const float w = expf(ws_lse[s * stride + row] - mx);
      if (w > 0.0f) acc = fmaf(w, ws_out[(s * stride + row) * D + d], acc);
    }
    out[d] = from_float<T>(acc / total);
  }
  if (lane == 0 && p.lse) p.lse[row] = mx + logf(total);
}

template <typename T, int DPL, int RPW>
cudaError_t launch_attention(const AttentionParams& p, int64_t num_splits, float* ws_out,
                             float* ws_lse, cudaStream_t stream) {
  using TileT = Tile<DPL, RPW>;
  const size_t smem = TileT::kSmemFloats * sizeof(float);
  auto kernel = attention_kernel<T, DPL, RPW>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  // Upper bound on the row tiles of all requests: at most one partial tile per request.
  const int64_t tiles = (p.total_q * G + TileT::kRows - 1) / TileT::kRows + p.batch;
  const dim3 grid(unsigned(tiles), unsigned(p.kv.num_kv_heads), unsigned(num_splits));
  kernel<<<grid, kThreads, smem, stream>>>(p, num_splits, ws_out, ws_lse);
  err = cudaGetLastError();
  if (err != cudaSuccess || num_splits <= 1) return err;
  const int64_t rows = p.total_q * p.num_q_heads;
  merge_kernel<T><<<unsigned((rows + kWarps - 1) / kWarps), kThreads, 0, stream>>>(
      p, num_splits, ws_out, ws_lse);
  return cudaGetLastError();
}

// ---- tensor-core path (bf16 / fp16, head_dim 64 or 128) ----------------------------------------
// Same work decomposition as attention_kernel (64 query rows x one KV head x one key split per
// CTA), FlashAttention-2 style: 4 warps, each owns 16 query rows; per 64-key block S = Q K^T and
// O += P V run on mma.sync.m16n8k16 (bf16/fp16 in, fp32 accumulate), the online softmax runs on
// the fp32 accumulator fragments (P is rounded to the input dtype for the P V product, as in
// FlashAttention). K/V are loaded with 16-byte vector loads, all of a thread's loads issued before
// any is stored, so each CTA keeps 32 KiB of the KV stream in flight; both are stored row-major
// (conflict-free 16-byte stores) and V's B fragments are read with ldmatrix.trans.
constexpr int kMmaThreads = 128;
constexpr int kMmaRows = 64;
constexpr int kMmaKeys = 64;

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, bf16_t>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();  // never launched below sm_80 (the package builds sm_80 and sm_90a)
#endif
}

// Two floats -> the 16-bit pair of an mma operand register (lower k index in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return uint32_t(from_float<T>(lo).bits) | (uint32_t(from_float<T>(hi).bits) << 16);
}

// Two 8x8 16-bit matrices from shared memory, transposed: lane i receives rows 2(i%4), 2(i%4)+1
// and column i/4 of each, i.e. the "col" B fragment of m16n8k16 when rows are k.
__device__ __forceinline__ void ldmatrix_x2_trans(const uint16_t* row, uint32_t& r0, uint32_t& r1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
#else
  r0 = r1 = 0;
  __trap();
#endif
}

__device__ __forceinline__ uint32_t lds32(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

template <int D>
struct MmaTile {
  static constexpr int kQKStride = D + 8;         // Qs/Ks row stride (elements): conflict-free
  static constexpr size_t kSmemBytes =
      (size_t(kMmaRows) + 2 * size_t(kMmaKeys)) * kQKStride * 2;  // Qs, Ks, Vs (16-bit)
};

template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads)
    attention_mma_kernel(AttentionParams p, int64_t num_splits, float* ws_out, float* ws_lse) {
  using TileT = MmaTile<D>;
  constexpr int QK = TileT::kQKStride;
  extern __shared__ uint4 smem_mma[];
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_mma);
  uint16_t* Ks = Qs + kMmaRows * QK;
  uint16_t* Vs = Ks + kMmaKeys * QK;  // [keys][D], like Ks; P V reads it with ldmatrix.trans
  __shared__ int64_t k_off[kMmaKeys], v_off[kMmaKeys];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;  // mma fragment coordinates
  const int64_t Hq = p.num_q_heads;
  const int64_t G = Hq / p.kv.num_kv_heads;

  const TileWork w = locate_tile(p, G, kMmaRows, kMmaKeys, num_splits);
  if (w.b < 0) return;  // the grid is an upper bound on the number of tiles
  const int64_t b = w.b, kvh = w.kvh, r0 = w.r0, r1 = w.r1, k_lo = w.k_lo, k_hi = w.k_hi;
  const RequestSpan span = w.span;

  // Query tile -> shared (raw 16-bit values) -> A fragments in registers for the whole CTA life.
  const uint16_t* q = static_cast<const uint16_t*>(p.q);
  for (int e = tid; e < kMmaRows * D; e += kMmaThreads) {
    const int r = e / D, d = e % D;
    const int64_t rr = r0 + r;
    uint16_t v = 0;
    if (rr < r1) {
      const int64_t i = rr / G, head = kvh * G + rr % G;
      v = q[(span.q_begin + i) * p.q_tok_stride + head * p.q_head_stride + d];
    }
    Qs[r * QK + d] = v;
  }
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kt = 0; kt < D / 16; ++kt) {
    const uint16_t* base = Qs + (warp * 16 + g) * QK + kt * 16 + t * 2;
    qf[kt][0] = lds32(base);
    qf[kt][1] = lds32(base + 8 * QK);
    qf[kt][2] = lds32(base + 8);
    qf[kt][3] = lds32(base + 8 * QK + 8);
  }

  // This thread's two rows (tile-local): lo = warp*16 + g, hi = lo + 8.
  const int row_lo = warp * 16 + g;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
  bool bad[2] = {false, false};  // a visible score was NaN or +inf (finish_row)
  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] = 0.0f;

  const uint16_t* kc = static_cast<const uint16_t*>(p.kv.k);
  const uint16_t* vc = static_cast<const uint16_t*>(p.kv.v);
  constexpr int kChunksPerKey = D / 8;  // 16-byte chunks
  constexpr int kLoads = kMmaKeys * kChunksPerKey / kMmaThreads;
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += kMmaKeys) {
    __syncthreads();  // previous block consumed
    if (tid < kMmaKeys) {
      key_offsets(p.kv, b, kvh, k0 + tid, k_hi, k_off[tid], v_off[tid]);
    }
    __syncthreads();
    uint4 kr[kLoads], vr[kLoads];
#pragma unroll
    for (int c = 0; c < kLoads; ++c) {
      const int idx = tid + c * kMmaThreads, key = idx / kChunksPerKey, ch = idx % kChunksPerKey;
      const int64_t ko = k_off[key];
      kr[c] = make_uint4(0, 0, 0, 0);
      vr[c] = make_uint4(0, 0, 0, 0);
      if (ko >= 0) {
        kr[c] = *reinterpret_cast<const uint4*>(kc + ko + ch * 8);
        vr[c] = *reinterpret_cast<const uint4*>(vc + v_off[key] + ch * 8);
      }
    }
#pragma unroll
    for (int c = 0; c < kLoads; ++c) {
      const int idx = tid + c * kMmaThreads, key = idx / kChunksPerKey, ch = idx % kChunksPerKey;
      *reinterpret_cast<uint4*>(Ks + key * QK + ch * 8) = kr[c];
      *reinterpret_cast<uint4*>(Vs + key * QK + ch * 8) = vr[c];
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x 64 keys (8 n-tiles of 8 keys).
    float s[kMmaKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kMmaKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
#pragma unroll
    for (int kt = 0; kt < D / 16; ++kt)
#pragma unroll
      for (int nt = 0; nt < kMmaKeys / 8; ++nt) {
        const uint16_t* kb = Ks + (nt * 8 + g) * QK + kt * 16 + t * 2;
        mma_16816<T>(s[nt], qf[kt], lds32(kb), lds32(kb + 8));
      }

    // Scale, mask (element (nt, e): row lo/hi for e < 2 / e >= 2, key nt*8 + 2t + (e & 1)).
#pragma unroll
    for (int nt = 0; nt < kMmaKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * 8 + t * 2 + (e & 1);
        const int64_t pos = k0 + key, rr = r0 + row_lo + (e >= 2 ? 8 : 0);
        bool vis = k_off[key] >= 0 && rr < r1;
        if (vis && pos >= span.kv_len) {
          const int64_t i = rr / G;
          vis = new_token_visible(p.mask_mode, p.tree_mask, p.mask_words, span.q_begin + i, i,
                                  pos - span.kv_len);
        }
        s[nt][e] = vis ? s[nt][e] * p.scale : kNegInf;
      }

    // Online softmax per row; a row is spread over the 4 threads of a quad.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = kNegInf;
#pragma unroll
      for (int nt = 0; nt < kMmaKeys / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(cuda::kFullMask, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(cuda::kFullMask, mx, 2));
      int any_bad = 0;
#pragma unroll
      for (int nt = 0; nt < kMmaKeys / 8; ++nt)
        any_bad |= bad_score(s[nt][2 * h]) | bad_score(s[nt][2 * h + 1]);
      any_bad |= __shfl_xor_sync(cuda::kFullMask, any_bad, 1);
      any_bad |= __shfl_xor_sync(cuda::kFullMask, any_bad, 2);
      bad[h] = bad[h] || any_bad != 0;
      const float m_new = fmaxf(m[h], mx);
      const float base = m_new == kNegInf ? 0.0f : m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < kMmaKeys / 8; ++nt) {
        s[nt][2 * h] = expf(s[nt][2 * h] - base);
        s[nt][2 * h + 1] = expf(s[nt][2 * h + 1] - base);
        sum += s[nt][2 * h] + s[nt][2 * h + 1];
      }
      sum += __shfl_xor_sync(cuda::kFullMask, sum, 1);
      sum += __shfl_xor_sync(cuda::kFullMask, sum, 2);
      const float alpha = expf(m[h] - base);
      l[h] = l[h] * alpha + sum;
      m[h] = m_new;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * h] *= alpha;
        o[dt][2 * h + 1] *= alpha;
      }
    }

    // O += P V: the S accumulators of n-tiles (2kk, 2kk+1) are the A fragment of key slab kk.
#pragma unroll
    for (int kk = 0; kk < kMmaKeys / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                             pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        // B fragment (k = key, n = dim): two 8x8 matrices (keys kk*16 + 0..7 and + 8..15, dims
        // dt*8 .. +7) loaded transposed; lanes 0..15 give the row addresses.
        const uint16_t* row = Vs + (kk * 16 + (lane & 15)) * QK + dt * 8;
        uint32_t b0, b1;
        ldmatrix_x2_trans(row, b0, b1);
        mma_16816<T>(o[dt], a, b0, b1);
      }
    }
  }

  // Normalise and write (element (dt, e): row lo/hi, dim dt*8 + 2t + (e & 1)).
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t rr = r0 + row_lo + 8 * h;
    if (rr >= r1) continue;
    const int64_t i = rr / G, head = kvh * G + rr % G;
    const int64_t row = (span.q_begin + i) * Hq + head;
    const RowFinish fin = finish_row(m[h], l[h], bad[h]);
    const float inv = fin.inv, lse = fin.lse;
    if (num_splits > 1) {
      const int64_t slot = w.split * p.total_q * Hq + row;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        ws_out[slot * D + dt * 8 + 2 * t] = o[dt][2 * h] * inv;
        ws_out[slot * D + dt * 8 + 2 * t + 1] = o[dt][2 * h + 1] * inv;
      }
      if (t == 0) ws_lse[slot] = lse;
    } else {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        out[row * D + dt * 8 + 2 * t] = from_float<T>(o[dt][2 * h] * inv);
        out[row * D + dt * 8 + 2 * t + 1] = from_float<T>(o[dt][2 * h + 1] * inv);
      }
      if (t == 0 && p.lse) p.lse[row] = lse;
    }
  }
}

template <typename T, int D>
cudaError_t launch_attention_mma(const AttentionParams& p, int64_t num_splits, float* ws_out,
                                 float* ws_lse, cudaStream_t stream) {
  const size_t smem = MmaTile<D>::kSmemBytes;
  auto kernel = attention_mma_kernel<T, D>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  const int64_t tiles = (p.total_q * G + kMmaRows - 1) / kMmaRows + p.batch;
  const dim3 grid(unsigned(tiles), unsigned(p.kv.num_kv_heads), unsigned(num_splits));
  kernel<<<grid, kMmaThreads, smem, stream>>>(p, num_splits, ws_out, ws_lse);
  err = cudaGetLastError();
  if (err != cudaSuccess || num_splits <= 1) return err;
  const int64_t rows = p.total_q * p.num_q_heads;
  merge_kernel<T><<<unsigned((rows + kWarps - 1) / kWarps), kThreads, 0, stream>>>(
      p, num_splits, ws_out, ws_lse);
  return cudaGetLastError();
}

// The tensor-core path needs 16-bit inputs, head_dim 64 or 128, and 16-byte aligned cache rows
// (vector loads); DOMINO_ATTENTION_MMA=0 forces the CUDA-core kernel (for A/B checks).
bool use_mma_path(const AttentionParams& p) {
  if (p.dtype == DType::F32 || (p.head_dim != 64 && p.head_dim != 128)) return false;
  const char* env = std::getenv("DOMINO_ATTENTION_MMA");
  if (env != nullptr && env[0] == '0') return false;
  const PagedKV& kv = p.kv;
  const int64_t strides[] = {kv.k_page_stride, kv.k_slot_stride, kv.k_head_stride,
                             kv.v_page_stride, kv.v_slot_stride, kv.v_head_stride};
  for (int64_t st : strides)
    if (st % 8 != 0) return false;
  return reinterpret_cast<uintptr_t>(kv.k) % 16 == 0 && reinterpret_cast<uintptr_t>(kv.v) % 16 == 0;
}

// ---- append_kv: one CTA per new-token row --------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) append_kv_kernel(AppendParams p) {
  const int64_t row = blockIdx.x;
  const int64_t b = request_of_row(p.kv_lens, p.q_cu_lens, p.batch, p.total_q, row);
  if (b < 0) return;
  const RequestSpan s = request_span(p.kv_lens, p.q_cu_lens, p.total_q, b);
  const int64_t pos = s.kv_len + (row - s.q_begin);
  const int64_t page = page_of(p.kv, b, pos);
  if (page < 0) return;
  const int64_t slot = pos % p.kv.page_size, D = p.head_dim;
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* kc = static_cast<T*>(p.k_cache);
  T* vc = static_cast<T*>(p.v_cache);
  for (int64_t e = threadIdx.x; e < p.kv.num_kv_heads * D; e += blockDim.x) {
    const int64_t h = e / D, d = e % D;
    kc[cache_offset(page, slot, h, p.kv.k_page_stride, p.kv.k_slot_stride, p.kv.k_head_stride) +
       d] = k[row * p.k_tok_stride + h * p.k_head_stride + d];
    vc[cache_offset(page, slot, h, p.kv.v_page_stride, p.kv.v_slot_stride, p.kv.v_head_stride) +
       d] = v[row * p.v_tok_stride + h * p.v_head_stride + d];
  }
}

// ---- tree_info: one warp per request, nodes in order, lanes over mask words ----------------------
// Word w of every row is always handled by lane w % 32, and depth by lane 0, so each value read
// (the parent's row) was written earlier by the same thread: no synchronisation needed.
__global__ void tree_info_kernel(TreeInfoParams p) {
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  const int64_t T = p.nodes, W = p.words, n = clamped_num_nodes(p, b);
  const int64_t prefix = p.prefix_lens[b];
  int32_t* mask = p.mask + b * T * W;
  for (int64_t i = 0; i < T; ++i) {
    const int64_t par = i < n ? valid_parent(p, b, i) : -1;
    for (int64_t w = lane; w < W; w += 32) {
      uint32_t word = 0;
      if (i < n) {
        if (par >= 0) word = uint32_t(mask[par * W + w]);
        if (w == (i >> 5)) word |= 1u << (i & 31);
      }
      mask[i * W + w] = int32_t(word);
    }
    if (lane == 0) {
      const int32_t depth = (i < n && par >= 0) ? p.depth[b * T + par] + 1 : 0;
      p.depth[b * T + i] = depth;
      p.positions[b * T + i] = int64_t(uint64_t(prefix) + uint64_t(depth));  // wraps, never UB
    }
  }
}

}  // namespace

int64_t attention_cuda_splits(const AttentionParams& p, int num_sms) {
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  const int64_t rows_per_cta = p.head_dim > 128 ? Tile<8, 4>::kRows : Tile<4, 8>::kRows;
  const int64_t tiles = (p.total_q * G + rows_per_cta - 1) / rows_per_cta;
  const int64_t ctas = (tiles > p.batch ? tiles : p.batch) * p.kv.num_kv_heads;
  const int64_t target = 2 * int64_t(num_sms > 0 ? num_sms : 1);
  if (ctas >= target) return 1;
  // Never split into pieces shorter than 256 keys of the block table's capacity.
  const int64_t capacity = p.kv.max_pages * p.kv.page_size;
  int64_t splits = (target + ctas - 1) / ctas;
  if (splits > capacity / 256) splits = capacity / 256;
  if (splits > kMaxSplits) splits = kMaxSplits;
  return splits < 1 ? 1 : splits;
}

int attention_cuda(const AttentionParams& p, int64_t num_splits, float* ws_out, float* ws_lse,
                   void* stream) {
  if (p.total_q == 0 || p.batch == 0) return int(cudaSuccess);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaErrorInvalidValue;
  if (use_mma_path(p)) {
    const bool d64 = p.head_dim == 64;
    if (p.dtype == DType::BF16)
      return int(d64 ? launch_attention_mma<bf16_t, 64>(p, num_splits, ws_out, ws_lse, s)
                     : launch_attention_mma<bf16_t, 128>(p, num_splits, ws_out, ws_lse, s));
    return int(d64 ? launch_attention_mma<f16_t, 64>(p, num_splits, ws_out, ws_lse, s)
                   : launch_attention_mma<f16_t, 128>(p, num_splits, ws_out, ws_lse, s));
  }
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.head_dim <= 32) err = launch_attention<T, 1, 8>(p, num_splits, ws_out, ws_lse, s);
    else if (p.head_dim <= 64) err = launch_attention<T, 2, 8>(p, num_splits, ws_out, ws_lse, s);
    else if (p.head_dim <= 128) err = launch_attention<T, 4, 8>(p, num_splits, ws_out, ws_lse, s);
    else if (p.head_dim <= 256) err = launch_attention<T, 8, 4>(p, num_splits, ws_out, ws_lse, s);
  });
  return int(err);
}

int append_kv_cuda(const AppendParams& p, void* stream) {
  if (p.total_q == 0 || p.batch == 0) return int(cudaSuccess);
  cudaError_t err = cudaSuccess;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    append_kv_kernel<T><<<unsigned(p.total_q), 128, 0, static_cast<cudaStream_t>(stream)>>>(p);
    err = cudaGetLastError();
  });
  return int(err);
}

int tree_info_cuda(const TreeInfoParams& p, void* stream) {
  if (p.batch == 0 || p.nodes == 0) return int(cudaSuccess);
  tree_info_kernel<<<unsigned(p.batch), 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return int(cudaGetLastError());
}

}  // namespace attention
}  // namespace domino
