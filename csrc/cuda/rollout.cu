// CUDA implementation of the Domino rollout (semantics in domino/rollout.h); the same engine as
// csrc/cpu/rollout.cpp, as a fixed sequence of launches per level (no host sync, launch shapes
// depend only on the params: CUDA-graph capturable).
//
// Per depth (beam capacity F rows per request, inactive rows skip their work):
//   row_map   beam slot -> pool node and its state slot
//   m         silu(zp + (W1h h)[state])                         (corrected levels)
//   score     W2 pass: each CTA owns kRowsPerCta consecutive vocabulary rows; every warp keeps one
//             W2 row in registers and dots it with the m rows of a group of kGroup rows
//             (weight-stationary: a W2 row is read from HBM once per group; B <= 8 is one group),
//             adds the base logit and folds the score into the per-row TopK (lane r owns row r);
//             the CTA writes one partial per row
//   merge     one block per row: TopK partials -> (max, sum, top-k), log q
//   level     one block per request: the children join the pool (child_scores), the next beam
//             is ranked (rank_within) and gets state slots
//   grow      GRU input (table row gather or W_ih GEMV), GRU cell, [W1h | W_hh] h GEMV
// then the budget selection and emit (rank_within, emit_tree / emit_chain: rollout.h).
// Values read from device memory are clamped: a token outside [0, V) gives a zero GRU input.
#include <cuda_runtime.h>

#include "domino/cuda_utils.cuh"
#include "domino/rollout.h"

namespace domino {
namespace rollout {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kGroup = 8;                     // rows scored together per W2 row load
constexpr int kRowsPerWarp = 8;               // W2 rows per warp per CTA
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
constexpr int kMaxEPerLane = kCudaMaxE / 32;  // E <= 256 in registers per lane
constexpr int kMergeThreads = 128;

__device__ __forceinline__ float load_f(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::BF16: return to_float(static_cast<const bf16_t*>(p)[i]);
    case DType::F16: return to_float(static_cast<const f16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// ---------------------------------------------------------------- workspace
struct Workspace {
  float* zp;             // [B * (N - P)][E]
  // candidate pool, [B][Pmax]
  int64_t* node_tok;
  int32_t* node_par;     // pool index of the parent (-1: anchor)
  int32_t* node_state;   // state slot of an expanded node, else -1
  float* node_q;
  float* node_acc;
  float* node_score;
  uint8_t* keep;         // [B][Pmax] beam / budget flags
  int32_t* out_id;       // [B][Pmax] emit scratch
  int32_t* source;       // [B][M] pool index of each output node (tree q rows)
  int32_t* num;          // [B] pool size
  int32_t* num_states;   // [B]
  // expanded nodes' states, [B][Smax]
  float* node_h;         // [.][G]
  float* node_hg;        // [.][E + 3G]
  float* tree_q;         // [.][V] tree q rows (only with q rows)
  int32_t* frontier;     // [B][F] pool indices of the beam
  int32_t* count;        // [B]
  int32_t* row_map;      // [B * F] global pool index b * Pmax + node, or -1
  int32_t* state_map;    // [B * F] global state index b * Smax + slot, or -1
  float* m;              // [B * F][E]
  float* X;              // [max(B * (N - P), B * F)][max(H, G)]
  float* gi;             // [B * F][3G]
  TopK* partials;        // [nparts][B * F]
  int32_t* cand_tok;     // [B * F][k]
  float* cand_lq;        // [B * F][k]
  int32_t* cand_n;       // [B * F]
  float* row_stat;       // [B * F][2]: max, sum
};

struct Dims {
  int64_t B, H, G, E, V, G3, HG, M, F, Pmax, Smax, N, P, R, nparts;
};

Dims dims(const RolloutParams& p) {
  Dims d;
  d.B = p.B; d.H = p.H; d.G = p.G; d.E = p.E; d.V = p.V; d.G3 = 3 * p.G; d.HG = d.E + d.G3;
  d.M = int64_t(p.budget) + 1;
  d.F = beam_width(p);
  d.Pmax = pool_capacity(p);
  d.Smax = state_capacity(p);
  d.N = p.depth;
  d.P = p.pure_prefix;
  d.R = d.B * d.F;
  const int64_t nparts_full = (d.V + kRowsPerCta - 1) / kRowsPerCta;
  const int64_t nparts_short = p.shortlist ? (p.num_candidates + kRowsPerCta - 1) / kRowsPerCta : 0;
  d.nparts = nparts_full > nparts_short ? nparts_full : nparts_short;
  return d;
}

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

template <typename T>
T* carve(char*& cur, size_t n) {
  T* p = reinterpret_cast<T*>(cur);
  cur += align256(n * sizeof(T));
  return p;
}

Workspace layout(const RolloutParams& p, void* base, size_t* total) {
  const Dims d = dims(p);
  char* cur = static_cast<char*>(base);
  Workspace w;
  const int64_t BP = d.B * d.Pmax, BS = d.B * d.Smax;
  const int64_t nx = (d.B * (d.N - d.P) > d.R ? d.B * (d.N - d.P) : d.R);
  w.zp = carve<float>(cur, size_t(d.B * (d.N - d.P > 0 ? d.N - d.P : 1) * d.E));
  w.node_tok = carve<int64_t>(cur, size_t(BP));
  w.node_par = carve<int32_t>(cur, size_t(BP));
  w.node_state = carve<int32_t>(cur, size_t(BP));
  w.node_q = carve<float>(cur, size_t(BP));
  w.node_acc = carve<float>(cur, size_t(BP));
  w.node_score = carve<float>(cur, size_t(BP));
  w.keep = carve<uint8_t>(cur, size_t(BP));
  w.out_id = carve<int32_t>(cur, size_t(BP));
  w.source = carve<int32_t>(cur, size_t(d.B * d.M));
  w.num = carve<int32_t>(cur, size_t(d.B));
  w.num_states = carve<int32_t>(cur, size_t(d.B));
  w.node_h = carve<float>(cur, size_t(BS * d.G));
  w.node_hg = carve<float>(cur, size_t(BS * d.HG));
  w.tree_q = (p.tree && p.q_rows) ? carve<float>(cur, size_t(BS * d.V)) : nullptr;
  w.frontier = carve<int32_t>(cur, size_t(d.R));
  w.count = carve<int32_t>(cur, size_t(d.B));
  w.row_map = carve<int32_t>(cur, size_t(d.R));
  w.state_map = carve<int32_t>(cur, size_t(d.R));
  w.m = carve<float>(cur, size_t(d.R * d.E));
  w.X = carve<float>(cur, size_t(nx * (d.H > d.G ? d.H : d.G)));
  w.gi = carve<float>(cur, size_t(d.R * d.G3));
  w.partials = carve<TopK>(cur, size_t(d.nparts * d.R));
  w.cand_tok = carve<int32_t>(cur, size_t(d.R * p.topk));
  w.cand_lq = carve<float>(cur, size_t(d.R * p.topk));
  w.cand_n = carve<int32_t>(cur, size_t(d.R));
  w.row_stat = carve<float>(cur, size_t(d.R * 2));
  if (total) *total = size_t(cur - static_cast<char*>(base));
  return w;
}

// ---------------------------------------------------------------- small kernels
__global__ void init_kernel(RolloutParams p, Workspace w, int64_t Pmax, int64_t F) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.B) return;
  const int64_t n0 = b * Pmax;
  w.node_tok[n0] = p.anchor[b];
  w.node_par[n0] = -1;
  w.node_state[n0] = 0;
  w.node_q[n0] = 1.0f;
  w.node_acc[n0] = 0.0f;
  w.node_score[n0] = kSpineScore;  // the anchor starts the spine
  w.num[b] = 1;
  w.num_states[b] = 1;
  w.frontier[b * F] = 0;
  w.count[b] = 1;
}

// row_map[r] = b * Pmax + frontier[r] and state_map[r] = b * Smax + its state slot for
// r = b * F + f < b * F + count[b], else -1.
__global__ void row_map_kernel(Workspace w, int64_t B, int64_t F, int64_t Pmax, int64_t Smax) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= B * F) return;
  const int64_t b = r / F, f = r % F;
  const bool on = f < w.count[b];
  const int64_t n = on ? b * Pmax + w.frontier[r] : -1;
  w.row_map[r] = int32_t(n);
  w.state_map[r] = on ? int32_t(b * Smax + w.node_state[n]) : -1;
}

// X[a] = fp32 zz row of (b, i) for the corrected proposals, a = b * (N - P) + (i - P - 1).
__global__ void gather_zz_kernel(RolloutParams p, float* X, int64_t per) {
  const int64_t a = blockIdx.x;
  const int64_t b = a / per, i = p.pure_prefix + 1 + a % per;
  const int64_t slot = p.shift_label ? i - 1 : i;
  const int64_t off = b * p.hidden_stride_b + slot * p.hidden_stride_s;
  for (int64_t k = threadIdx.x; k < p.H; k += blockDim.x) X[a * p.H + k] = load_f(p.hidden, p.wdtype, off + k);
}

// X[a] = fp32 row `tok` of src ([V, K]) for the node of row a (zeros: inactive row, bad token).
__global__ void gather_token_rows_kernel(const void* src, DType dt, int64_t K, int64_t V,
                                         const int32_t* row_map, const int64_t* node_tok, float* X) {
  const int64_t a = blockIdx.x;
  const int32_t n = row_map[a];
  const int64_t t = n >= 0 ? node_tok[n] : -1;
  const bool ok = t >= 0 && t < V;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) X[a * K + k] = ok ? load_f(src, dt, t * K + k) : 0.0f;
}

__global__ void gather_h_kernel(const int32_t* state_map, const float* node_h, int64_t G, float* X) {
  const int64_t a = blockIdx.x;
  const int32_t s = state_map[a];
  for (int64_t k = threadIdx.x; k < G; k += blockDim.x) X[a * G + k] = s >= 0 ? node_h[int64_t(s) * G + k] : 0.0f;
}

// Y[map(a)][r] = dot(W[r, col : col + K], X[a]) for every weight row r (one warp per row, the
// row read once per group of kGroup activation rows). map == null: identity; map[a] < 0: skip.
template <typename T>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const T* W, int64_t ldw, int64_t col,
                                                        int64_t K, int64_t nrows, const float* X,
                                                        int64_t A, const int32_t* map, float* Y,
                                                        int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= nrows) return;
  const T* w = W + r * ldw + col;
  for (int64_t a0 = 0; a0 < A; a0 += kGroup) {
    float acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) acc[j] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = to_float(w[k]);
#pragma unroll
      for (int j = 0; j < kGroup; ++j)
        if (a0 + j < A) acc[j] = fmaf(wv, X[(a0 + j) * K + k], acc[j]);
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const float s = cuda::warp_sum(acc[j]);
      const int64_t a = a0 + j;
      if (lane == 0 && a < A) {
        const int64_t out = map ? map[a] : a;
        if (out >= 0) Y[out * ldy + r] = s;
      }
    }
  }
}

// GRU cell of every active new beam node: h = cell(gi, W_hh h_parent, h_parent).
template <typename T>
__global__ void gru_cell_kernel(const int32_t* row_map, const int32_t* state_map, Workspace w,
                                const T* table, const float* gi, int64_t G, int64_t E, int64_t HG,
                                int64_t Pmax, int64_t Smax, int64_t V, DType wdtype) {
  const int64_t a = blockIdx.x;
  const int32_t n = row_map[a];
  if (n < 0) return;
  const int64_t g = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (g >= G) return;
  const int64_t b = n / Pmax;
  const int32_t par = w.node_par[n];
  const int64_t ps = par >= 0 ? b * Smax + w.node_state[b * Pmax + par] : -1;
  const float* hp = ps >= 0 ? w.node_h + ps * G : nullptr;
  const float* gh = ps >= 0 ? w.node_hg + ps * HG + E : nullptr;
  float x_r, x_z, x_n;
  if (table) {
    const int64_t t = w.node_tok[n];
    const bool ok = t >= 0 && t < V;
    x_r = ok ? to_float(table[t * 3 * G + g]) : 0.0f;
    x_z = ok ? to_float(table[t * 3 * G + G + g]) : 0.0f;
    x_n = ok ? to_float(table[t * 3 * G + 2 * G + g]) : 0.0f;
  } else {
    x_r = gi[a * 3 * G + g];
    x_z = gi[a * 3 * G + G + g];
    x_n = gi[a * 3 * G + 2 * G + g];
  }
  w.node_h[int64_t(state_map[a]) * G + g] = to_weight_precision(
      gru_cell(x_r, x_z, x_n, gh ? gh[g] : 0.0f, gh ? gh[G + g] : 0.0f, gh ? gh[2 * G + g] : 0.0f,
               hp ? hp[g] : 0.0f),
      wdtype);
}

__global__ void m_kernel(const int32_t* state_map, Workspace w, int64_t F, int64_t E, int64_t HG,
                         int64_t per, int64_t zp_i, DType wdtype) {
  const int64_t r = blockIdx.x;
  const int32_t s = state_map[r];
  if (s < 0) return;
  const int64_t b = r / F;
  const float* z = w.zp + (b * per + zp_i) * E;
  const float* hp = w.node_hg + int64_t(s) * HG;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) w.m[r * E + e] = head_activation(det::add(z[e], hp[e]), wdtype);
}

// ---------------------------------------------------------------- the vocabulary pass
struct LevelArgs {
  int32_t proposal;  // i
  int64_t F;         // beam capacity (rows per request)
  int64_t Pmax;      // pool capacity per request
  bool corrected;
  bool use_shortlist;
};

struct RowCtx {
  bool greedy;
  float temperature;
  uint64_t seed, offset;
  uint32_t stream;
};

__device__ __forceinline__ RowCtx row_ctx(const RolloutParams& p, int64_t b, int32_t node, int32_t i) {
  RowCtx c;
  c.temperature = p.temperature ? p.temperature[b] : 0.0f;
  c.greedy = !(c.temperature > 0.0f);
  c.seed = p.seed ? uint64_t(p.seed[b]) : 0;
  c.offset = p.offset ? uint64_t(p.offset[b]) : 0;
  c.stream = noise_stream(p.tree, i, node);
  return c;
}

// Where row r's q row goes: the chain's output row of proposal i, or the tree's state slot.
__device__ __forceinline__ float* q_row_of(const RolloutParams& p, const Workspace& w, int64_t r,
                                           int64_t F, int32_t i) {
  if (!p.q_rows) return nullptr;
  if (p.tree) return w.tree_q + int64_t(w.state_map[r]) * p.V;
  return p.q_rows + ((r / F) * p.depth + (i - 1)) * p.V;
}

// Fold one score into a row's state (same rules as the CPU tile epilogue).
__device__ __forceinline__ void consume_one(TopK& st, float s, int32_t v, const RowCtx& c, int k,
                                            float* qraw) {
  float sv = c.greedy ? s : det::div(s, c.temperature);
  if (det::is_nan(sv)) sv = -det::kInf;
  if (qraw) qraw[v] = sv;
  if (!(sv > -det::kInf)) return;
  softmax_fold(st, sv, 1.0f);
  if (c.greedy) {
    if (st.n < k || key_better(sv, v, st.key[k - 1], st.idx[k - 1])) topk_insert(st, k, sv, sv, v);
    return;
  }
  if (st.n == k && det::add(sv, kGumbelMaxNoise) < st.key[k - 1]) return;
  const float key = gumbel_key(sv, rng::uniform(c.seed, c.offset, c.stream, uint32_t(v)));
  topk_insert(st, k, key, sv, v);
}

// Sums 8 per-lane partials over the warp with 9 shuffles (instead of 8 x 5): a butterfly that
// halves the live values at each of the steps 4, 2, 1, then sums across lanes 8 and 16 apart.
// Afterwards lane l holds the total of acc[l & 7].
__device__ __forceinline__ float transpose_reduce8(float (&acc)[kGroup], int lane) {
  static_assert(kGroup == 8, "transpose_reduce8 reduces 8 rows");
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const bool up = lane & 4;
    const float send = up ? acc[j] : acc[j + 4];
    const float keep = up ? acc[j + 4] : acc[j];
    acc[j] = keep + __shfl_xor_sync(cuda::kFullMask, send, 4);
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const bool up = lane & 2;
    const float send = up ? acc[j] : acc[j + 2];
    const float keep = up ? acc[j + 2] : acc[j];
    acc[j] = keep + __shfl_xor_sync(cuda::kFullMask, send, 2);
  }
  {
    const bool up = lane & 1;
    const float send = up ? acc[0] : acc[1];
    const float keep = up ? acc[1] : acc[0];
    acc[0] = keep + __shfl_xor_sync(cuda::kFullMask, send, 1);
  }
  float v = acc[0];
  v += __shfl_xor_sync(cuda::kFullMask, v, 8);
  v += __shfl_xor_sync(cuda::kFullMask, v, 16);
  return v;
}

// grid.x = column range of kRowsPerCta (vocabulary rows, or shortlist entries); grid.y = 1 (full
// vocabulary: groups of kGroup rows looped inside) or R (shortlist: one row per CTA).
template <typename T>
__global__ void __launch_bounds__(kThreads) score_kernel(RolloutParams p, Workspace w, LevelArgs L,
                                                         int64_t R, int64_t ncols) {
  __shared__ TopK warp_part[kWarps][kGroup];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t E = p.E;
  const int epl = int((E + 31) / 32);
  const int64_t j_begin = int64_t(blockIdx.x) * kRowsPerCta + warp * kRowsPerWarp;
  const T* W2 = static_cast<const T*>(p.w2);
  const int64_t g_begin = L.use_shortlist ? int64_t(blockIdx.y) : 0;
  const int64_t g_end = L.use_shortlist ? g_begin + 1 : R;
  const int64_t g_step = L.use_shortlist ? 1 : kGroup;

  for (int64_t r0 = g_begin; r0 < g_end; r0 += g_step) {
    const int nrows = int(g_end - r0 < g_step ? g_end - r0 : g_step);
    // lane r (< nrows) owns row r0 + r
    const int64_t my_row = r0 + lane;
    const bool mine = lane < nrows && w.row_map[my_row] >= 0;
    TopK st;
    topk_init(st);
    RowCtx ctx{};
    int64_t my_b = 0;
    float* qraw = nullptr;
    const void* base_row = nullptr;
    if (mine) {
      const int32_t n = w.row_map[my_row];
      my_b = my_row / L.F;
      ctx = row_ctx(p, my_b, int32_t(n - my_b * L.Pmax), L.proposal);
      base_row = static_cast<const char*>(p.base) +
                 (my_b * p.base_stride_b + int64_t(L.proposal - 1) * p.base_stride_n) *
                     (p.base_dtype == DType::F32 ? 4 : 2);
      qraw = q_row_of(p, w, my_row, L.F, L.proposal);
    }
    bool any_active = false;
    for (int r = 0; r < nrows; ++r) any_active |= w.row_map[r0 + r] >= 0;
    if (any_active) {
      const int32_t* ids = L.use_shortlist ? p.shortlist + (r0 / L.F) * p.num_candidates : nullptr;
      // The group's m rows live in registers for the whole column range (m[r][q * 32 + lane]).
      float mreg[kGroup][kMaxEPerLane];
#pragma unroll
      for (int r = 0; r < kGroup; ++r)
#pragma unroll
        for (int q = 0; q < kMaxEPerLane; ++q) {
          const int64_t e = int64_t(q) * 32 + lane;
          mreg[r][q] = (L.corrected && r < nrows && q < epl && e < E) ? w.m[(r0 + r) * E + e] : 0.0f;
        }
      for (int jj = 0; jj < kRowsPerWarp; ++jj) {
        const int64_t j = j_begin + jj;
        if (j >= ncols) break;
        const int64_t v = ids ? ids[j] : j;
        float mine_s = 0.0f;
        if (L.corrected) {
          float wr[kMaxEPerLane];
#pragma unroll
          for (int q = 0; q < kMaxEPerLane; ++q) {
            const int64_t e = int64_t(q) * 32 + lane;
            wr[q] = (q < epl && e < E) ? to_float(W2[v * E + e]) : 0.0f;
          }
          float acc[kGroup];
#pragma unroll
          for (int r = 0; r < kGroup; ++r) {
            acc[r] = 0.0f;
            if (r < nrows) {  // warp-uniform
#pragma unroll
              for (int q = 0; q < kMaxEPerLane; ++q) acc[r] = fmaf(wr[q], mreg[r][q], acc[r]);
            }
          }
          mine_s = transpose_reduce8(acc, lane);  // lane l: the dot of row (l & 7)
        }
        if (mine) {
          const float bl = load_f(base_row, p.base_dtype, v);
          const float score = L.corrected ? det::add(bl, mine_s) : bl;
          consume_one(st, score, int32_t(v), ctx, p.topk, qraw);
        }
      }
    }
    // CTA partial per row: warps in order (ascending columns), merged by warp 0's lanes.
    if (lane < kGroup) warp_part[warp][lane] = st;
    __syncthreads();
    if (warp == 0 && lane < nrows) {
      TopK tot;
      topk_init(tot);
      for (int q = 0; q < kWarps; ++q) topk_merge(tot, warp_part[q][lane], p.topk);
      w.partials[int64_t(blockIdx.x) * R + r0 + lane] = tot;
    }
    __syncthreads();
  }
}

// One block per row: merge the partials, write the row's candidates (token, log q) and stats.
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(RolloutParams p, Workspace w,
                                                              int64_t R, int64_t nparts) {
  __shared__ TopK part[kMergeThreads];
  const int64_t r = blockIdx.x;
  if (w.row_map[r] < 0) {
    if (threadIdx.x == 0) w.cand_n[r] = 0;
    return;
  }
  TopK st;
  topk_init(st);
  for (int64_t q = threadIdx.x; q < nparts; q += blockDim.x) topk_merge(st, w.partials[q * R + r], p.topk);
  part[threadIdx.x] = st;
  __syncthreads();
  for (int s = kMergeThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) topk_merge(part[threadIdx.x], part[threadIdx.x + s], p.topk);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const TopK& t = part[0];
    w.cand_n[r] = t.n;
    for (int j = 0; j < t.n; ++j) {
      w.cand_tok[r * p.topk + j] = t.idx[j];
      w.cand_lq[r * p.topk + j] = log_q(t, t.val[j]);
    }
    w.row_stat[2 * r] = t.max;
    w.row_stat[2 * r + 1] = t.sum;
  }
}

__global__ void q_rows_kernel(RolloutParams p, Workspace w, int64_t F, int32_t i, bool fill_neg_inf) {
  const int64_t r = blockIdx.y;
  if (w.row_map[r] < 0) return;
  float* q = q_row_of(p, w, r, F, i);
  const float mx = w.row_stat[2 * r], sum = w.row_stat[2 * r + 1];
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < p.V; v += int64_t(gridDim.x) * blockDim.x) {
    if (fill_neg_inf) q[v] = -det::kInf;
    else q[v] = mx > -det::kInf ? det::div(det::exp(det::sub(q[v], mx)), sum) : 0.0f;
  }
}

// One block per request: the depth's children join the pool (child_scores, in (row, rank) order);
// unless this was the last depth, the best F of them (rank_within) become the next beam, in pool
// order, with fresh state slots.
__global__ void level_kernel(RolloutParams p, Workspace w, int64_t F, int64_t Pmax, bool last) {
  const int64_t b = blockIdx.x;
  const int k = p.topk;
  __shared__ int32_t range[2];
  int32_t* tok_par = w.node_par + b * Pmax;
  float* score = w.node_score + b * Pmax;
  uint8_t* keep = w.keep + b * Pmax;
  if (threadIdx.x == 0) {
    const int32_t begin = w.num[b];
    int32_t n = begin;
    const bool sampled = p.temperature && p.temperature[b] > 0.0f;
    for (int32_t f = 0; f < w.count[b]; ++f) {
      const int64_t r = b * F + f;
      const int32_t par = w.frontier[r];
      const int nc = w.cand_n[r];
      float acc[kMaxTopK], sc[kMaxTopK];
      child_scores(w.node_acc[b * Pmax + par], score[par], sampled, w.cand_lq + r * k, nc, acc, sc);
      for (int j = 0; j < nc && n < Pmax; ++j, ++n) {
        const int64_t g = b * Pmax + n;
        w.node_tok[g] = w.cand_tok[r * k + j];
        tok_par[n] = par;
        w.node_state[g] = -1;
        w.node_q[g] = det::exp(w.cand_lq[r * k + j]);
        w.node_acc[g] = acc[j];
        score[n] = sc[j];
      }
    }
    w.num[b] = n;
    range[0] = begin;
    range[1] = n;
  }
  __syncthreads();
  if (last) return;
  const int32_t begin = range[0], end = range[1], beam = int32_t(F);
  for (int32_t c = begin + int32_t(threadIdx.x); c < end; c += int32_t(blockDim.x))
    keep[c] = rank_within(score, begin, end, c, beam) < beam;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t f = 0;
    for (int32_t c = begin; c < end && f < beam; ++c) {
      if (!keep[c]) continue;
      w.frontier[b * F + f++] = c;
      w.node_state[b * Pmax + c] = w.num_states[b]++;
    }
    w.count[b] = f;
  }
}

// One block per request: the budget selection (rank_within) and the tree layout (emit_tree).
__global__ void select_emit_kernel(RolloutParams p, Workspace w, int64_t Pmax, int64_t M) {
  const int64_t b = blockIdx.x;
  const int32_t n = w.num[b];
  const float* score = w.node_score + b * Pmax;
  uint8_t* keep = w.keep + b * Pmax;
  for (int32_t c = int32_t(threadIdx.x); c < n; c += int32_t(blockDim.x))
    keep[c] = rank_within(score, 0, n, c, int32_t(M)) < int32_t(M);
  __syncthreads();
  if (threadIdx.x == 0)
    p.num_nodes[b] = emit_tree(w.node_tok + b * Pmax, w.node_par + b * Pmax, w.node_q + b * Pmax, keep, n,
                               int32_t(M), w.out_id + b * Pmax, p.tokens + b * M, p.parents + b * M,
                               p.q + b * M, w.source + b * M);
}

__global__ void emit_chain_kernel(RolloutParams p, Workspace w, int64_t Pmax) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.B) return;
  emit_chain(w.node_tok + b * Pmax, w.node_q + b * Pmax, w.num[b], p.depth, p.tokens + b * p.depth,
             p.q + b * p.depth);
}

// Tree q rows: output node j of request b gets its pool node's expansion row, or zeros.
__global__ void tree_q_rows_kernel(RolloutParams p, Workspace w, int64_t Pmax, int64_t Smax, int64_t M) {
  for (int64_t o = blockIdx.y; o < p.B * M; o += gridDim.y) {  // o = b * M + j
    const int64_t b = o / M;
    const int32_t c = w.source[o];
    const int32_t st = c >= 0 ? w.node_state[b * Pmax + c] : -1;
    const float* src = st >= 0 ? w.tree_q + (b * Smax + st) * p.V : nullptr;
    float* dst = p.q_rows + o * p.V;
    for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < p.V; v += int64_t(gridDim.x) * blockDim.x)
      dst[v] = src ? src[v] : 0.0f;
  }
}

// ---------------------------------------------------------------- host sequence
template <typename T>
struct Runner {
  const RolloutParams& p;
  Workspace w;
  Dims d;
  cudaStream_t s;

  void gemv(const void* W, int64_t ldw, int64_t col, int64_t K, int64_t nrows, const float* X,
            int64_t A, const int32_t* map, float* Y, int64_t ldy) {
    const unsigned grid = unsigned((nrows + kWarps - 1) / kWarps);
    gemv_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(W), ldw, col, K, nrows, X, A, map, Y, ldy);
  }

  void map_rows() {
    row_map_kernel<<<unsigned((d.R + 255) / 256), 256, 0, s>>>(w, d.B, d.F, d.Pmax, d.Smax);
  }

  // States of the beam nodes (row_map / state_map current).
  void grow() {
    const int64_t R = d.R;
    if (!p.gru_table) {
      gather_token_rows_kernel<<<unsigned(R), 256, 0, s>>>(p.embedding, p.wdtype, d.H, d.V, w.row_map, w.node_tok, w.X);
      gemv(p.w_ih, d.H, 0, d.H, d.G3, w.X, R, nullptr, w.gi, d.G3);
    }
    gru_cell_kernel<T><<<dim3(unsigned(R), unsigned((d.G + 255) / 256)), 256, 0, s>>>(
        w.row_map, w.state_map, w, static_cast<const T*>(p.gru_table), w.gi, d.G, d.E, d.HG, d.Pmax,
        d.Smax, d.V, p.wdtype);
    gather_h_kernel<<<unsigned(R), 256, 0, s>>>(w.state_map, w.node_h, d.G, w.X);
    gemv(p.w1, d.H + d.G, d.H, d.G, d.E, w.X, R, w.state_map, w.node_hg, d.HG);
    gemv(p.w_hh, d.G, 0, d.G, d.G3, w.X, R, w.state_map, w.node_hg + d.E, d.HG);
  }

  void run() {
    init_kernel<<<unsigned((d.B + 127) / 128), 128, 0, s>>>(p, w, d.Pmax, d.F);
    map_rows();
    const bool need_gru = d.N > d.P;
    const int64_t per = d.N - d.P;
    if (need_gru) {
      gather_zz_kernel<<<unsigned(d.B * per), 256, 0, s>>>(p, w.X, per);
      gemv(p.w1, d.H + d.G, 0, d.H, d.E, w.X, d.B * per, nullptr, w.zp, d.E);
      grow();
    }
    const int64_t R = d.R;
    for (int32_t dd = 0; dd < int32_t(d.N); ++dd) {
      const int32_t i = dd + 1;
      const bool last = i == int32_t(d.N);
      LevelArgs L{i, d.F, d.Pmax, i > d.P, i > d.P && p.shortlist != nullptr && !p.tree};
      if (L.corrected) m_kernel<<<unsigned(R), 256, 0, s>>>(w.state_map, w, d.F, d.E, d.HG, per, i - d.P - 1, p.wdtype);
      if (p.q_rows && L.use_shortlist)
        q_rows_kernel<<<dim3(64, unsigned(R)), 256, 0, s>>>(p, w, d.F, i, true);
      const int64_t ncols = L.use_shortlist ? p.num_candidates : d.V;
      const int64_t nparts = (ncols + kRowsPerCta - 1) / kRowsPerCta;
      score_kernel<T><<<dim3(unsigned(nparts), L.use_shortlist ? unsigned(R) : 1u), kThreads, 0, s>>>(
          p, w, L, R, ncols);
      merge_kernel<<<unsigned(R), kMergeThreads, 0, s>>>(p, w, R, nparts);
      if (p.q_rows) q_rows_kernel<<<dim3(64, unsigned(R)), 256, 0, s>>>(p, w, d.F, i, false);
      level_kernel<<<unsigned(d.B), 128, 0, s>>>(p, w, d.F, d.Pmax, last);
      if (last) break;
      map_rows();
      if (need_gru) grow();
    }
    if (p.tree) {
      select_emit_kernel<<<unsigned(d.B), 128, 0, s>>>(p, w, d.Pmax, d.M);
      if (p.q_rows)
        tree_q_rows_kernel<<<dim3(64, unsigned(d.B * d.M < kCudaMaxRows ? d.B * d.M : kCudaMaxRows)), 256, 0, s>>>(
            p, w, d.Pmax, d.Smax, d.M);
    } else {
      emit_chain_kernel<<<unsigned((d.B + 127) / 128), 128, 0, s>>>(p, w, d.Pmax);
    }
  }
};

}  // namespace

size_t rollout_cuda_workspace_bytes(const RolloutParams& p) {
  size_t total = 0;
  layout(p, nullptr, &total);
  return total + 256;
}

int rollout_cuda(const RolloutParams& p, void* workspace, void* stream) {
  if (p.B == 0) return int(cudaSuccess);
  if (p.E > kCudaMaxE || p.B * beam_width(p) > kCudaMaxRows) return int(cudaErrorInvalidValue);
  const Workspace w = layout(p, workspace, nullptr);
  const Dims d = dims(p);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.wdtype, [&](auto tag) {
    using T = decltype(tag);
    Runner<T>{p, w, d, s}.run();
  });
  return int(cudaGetLastError());
}

}  // namespace rollout
}  // namespace domino
