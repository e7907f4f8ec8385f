// domino/rollout.h: fused Domino draft-token rollout (chain and tree), spec §3.3.
//
// Semantics (reference/rollout.py is the executable spec):
//   proposal i = 1..N predicts absolute position s+i from zz_i = z[i-1] (shift_label) or z[i].
//   scores_i = base_i                                   for i <= P (pure prefix)
//   scores_i = base_i + W2 · silu(W1 · [zz_i ; h])      for i >  P
//   h = GRU state after consuming [anchor, y_1 .. y_{i-1}] (PyTorch GRU, gates r,z,n, no bias,
//   h0 = 0, input = embedding row of the token, or gi = gru_table row when a table is given).
//   Greedy rows (no temperature, or T == 0): y_i = argmax scores_i, ties to the lowest index;
//   q = softmax(scores_i)[y_i] (T = 1). Sampled rows (T > 0): y_i = argmax_v (scores_i[v] / T
//   + Gumbel(u_v)), u_v = Philox uniform of (seed, offset, stream, v); q = softmax(scores_i/T)[y_i].
//
// The chain is run as a tree with topk = 1 and budget = N (one frontier node per request per
// level), so chain and tree share one engine: per level, (1) m = silu(zp + W1h·h) for every
// frontier row, (2) one pass over W2 that reads every weight row once for all rows of the level
// (weight-stationary), fused with the base-logit add, the online (max, sum-exp) and the per-row
// top-k / Gumbel top-k, (3) a merge of the per-chunk partials, (4) a per-request selection of the
// children (budget), (5) the GRU cell of every new node and one GEMV pass [W1h | W_hh] · h_new.
//
// Numerics: every dot product accumulates in fp32 (FMA, implementation-defined order: AVX-512 on
// the CPU, warp reductions on the GPU), so CPU and CUDA scores agree to fp32 rounding, not to the
// bit; argmax decisions agree whenever the top-2 margin exceeds that rounding (tests use margins).
// The element-wise math (GRU gates, SiLU, Gumbel keys, log q) uses domino::det.
//
// Defined results for bad values read from device memory (never an out-of-bounds access):
//   an anchor or a token outside [0, V) feeds a zero GRU input (the zero vector instead of the
//   embedding / table row); a NaN score never wins (treated as -inf); a row whose scores are all
//   -inf or NaN yields token -1 and q 0 and the request stops there (chain: the remaining tokens
//   are -1; tree: no child). q is NaN when a score is +inf. The binding layer rejects anchors
//   outside [0, V) for CPU tensors.
#pragma once

#include <cstddef>
#include <functional>

#include "domino/common.h"
#include "domino/numerics.h"
#include "domino/philox.h"

namespace domino {
namespace rollout {

constexpr int kMaxTopK = 8;  // largest tree fan-out (register-resident top-k lists on the GPU)
constexpr int kCudaMaxE = 256;   // CUDA keeps a W2 row (E values) in registers: 8 per lane
constexpr int64_t kCudaMaxRows = 65535;  // CUDA: batch * frontier rows (a grid dimension)
// A Gumbel key exceeds its scaled logit by at most -log(-log(1 - 2^-24)) = 16.64; elements whose
// scaled logit is more than this below the current k-th best key cannot enter the top-k.
constexpr float kGumbelMaxNoise = 16.7f;

struct RolloutParams {
  // hidden [B, S, H] (unit stride in H), dtype = weight dtype
  const void* hidden = nullptr;
  int64_t hidden_stride_b = 0, hidden_stride_s = 0;
  // base_logits [B, >= N, V] (unit stride in V), own dtype
  const void* base = nullptr;
  DType base_dtype = DType::F32;
  int64_t base_stride_b = 0, base_stride_n = 0;
  const int64_t* anchor = nullptr;  // [B]
  // Head weights, contiguous, all of dtype `wdtype`.
  const void* w_ih = nullptr;       // [3G, H]
  const void* w_hh = nullptr;       // [3G, G]
  const void* w1 = nullptr;         // [E, H + G]  (z columns first)
  const void* w2 = nullptr;         // [V, E]
  const void* embedding = nullptr;  // [V, H]
  const void* gru_table = nullptr;  // [V, 3G] or null
  // Optional CPU copy of W2 in the packed layout of pack_w2_bf16 (bf16 weights only; null = read
  // W2). Used where the CPU has AVX512_BF16; W2 is read otherwise, and always on CUDA.
  const uint32_t* w2_packed = nullptr;
  DType wdtype = DType::F32;
  int64_t B = 0, S = 0, H = 0, G = 0, E = 0, V = 0;
  int32_t depth = 0;        // chain: N proposals; tree: depth
  int32_t pure_prefix = 0;  // P
  bool shift_label = true;
  // Sampling: null temperature -> all rows greedy. seed/offset required when temperature given.
  const float* temperature = nullptr;
  const int64_t* seed = nullptr;
  const int64_t* offset = nullptr;
  bool tree = false;
  int32_t topk = 1;    // tree fan-out, 1..kMaxTopK (chain: 1)
  int32_t budget = 0;  // tree node budget excluding the root (chain: N)
  // Chain only: per-request shortlist [B, num_candidates] of vocab ids (null = full vocabulary),
  // and the optional q rows [B, N, V] fp32.
  const int32_t* shortlist = nullptr;
  int32_t num_candidates = 0;
  float* q_rows = nullptr;
  // Outputs. Chain: tokens [B, N], q [B, N]. Tree: tokens/parents/q [B, budget + 1], num_nodes [B].
  int64_t* tokens = nullptr;
  int64_t* parents = nullptr;
  float* q = nullptr;
  int64_t* num_nodes = nullptr;
};

// ---- element-wise math shared by the CPU and CUDA kernels (domino::det: same bits everywhere) --
DOMINO_HD float sigmoid(float x) { return det::div(1.0f, det::add(1.0f, det::exp(det::sub(0.0f, x)))); }
DOMINO_HD float silu(float x) { return det::mul(x, sigmoid(x)); }
// Activations that feed a weight GEMV are stored in the weight dtype (round to nearest even): the
// correction's hidden m = silu(pre) and the GRU state h. That is what the PyTorch modules compute
// with bf16 / fp16 weights (nn.Linear / nn.GRU outputs are in the weight dtype), what the ports do
// (spec §4.4: "store h in bf16"), and it makes every GEMV a sum of exact bf16 x bf16 products, so
// the CPU (vdpbf16ps) and tensor cores accumulate them in fp32 with nothing else rounded. fp32
// weights: nothing is rounded.
DOMINO_HD float to_weight_precision(float x, DType wdtype) {
  if (wdtype == DType::BF16) return to_float(to_bf16(x));
  if (wdtype == DType::F16) return to_float(to_f16(x));
  return x;
}
DOMINO_HD float head_activation(float pre, DType wdtype) { return to_weight_precision(silu(pre), wdtype); }
DOMINO_HD float tanh_(float x) { return det::sub(det::mul(2.0f, sigmoid(det::mul(2.0f, x))), 1.0f); }

// PyTorch GRU cell without biases, one element of the G-dim state.
DOMINO_HD float gru_cell(float gi_r, float gi_z, float gi_n, float gh_r, float gh_z, float gh_n,
                         float h) {
  const float r = sigmoid(det::add(gi_r, gh_r));
  const float u = sigmoid(det::add(gi_z, gh_z));
  const float n = tanh_(det::add(gi_n, det::mul(r, gh_n)));
  return det::add(det::mul(det::sub(1.0f, u), n), det::mul(u, h));
}

// The Gumbel key and the argmax order are the ones every op shares (numerics.h).
using det::gumbel_key;
using det::key_better;

// Per-row running state of the vocabulary pass: online softmax normaliser and a sorted top-k list
// of (key, index) with the scaled logit `val` of each entry (for log q). Order: larger key, then
// lower index. k <= kMaxTopK.
struct TopK {
  float max;  // running max of the scaled scores (-inf: none yet)
  float sum;  // sum of exp(scaled - max)
  int32_t n;  // entries used
  float key[kMaxTopK];
  float val[kMaxTopK];
  int32_t idx[kMaxTopK];
};

DOMINO_HD void topk_init(TopK& t) {
  t.max = -det::kInf;
  t.sum = 0.0f;
  t.n = 0;
}

// Smallest key that can still enter the list (-inf while it is not full).
DOMINO_HD float topk_floor(const TopK& t, int k) { return t.n < k ? -det::kInf : t.key[k - 1]; }

DOMINO_HD void topk_insert(TopK& t, int k, float key, float val, int32_t idx) {
  if (t.n == k && !key_better(key, idx, t.key[k - 1], t.idx[k - 1])) return;
  int pos = t.n < k ? t.n++ : k - 1;
  while (pos > 0 && key_better(key, idx, t.key[pos - 1], t.idx[pos - 1])) {
    t.key[pos] = t.key[pos - 1];
    t.val[pos] = t.val[pos - 1];
    t.idx[pos] = t.idx[pos - 1];
    --pos;
  }
  t.key[pos] = key;
  t.val[pos] = val;
  t.idx[pos] = idx;
}

// Online softmax normaliser: fold (m, s) = (max, sum exp(x - max)) of another set into t.
DOMINO_HD void softmax_fold(TopK& t, float m, float s) {
  if (!(m > -det::kInf)) return;
  if (m > t.max) {
    t.sum = det::add(det::mul(t.sum, det::exp(det::sub(t.max, m))), s);
    t.max = m;
  } else {
    t.sum = det::add(t.sum, det::mul(s, det::exp(det::sub(m, t.max))));
  }
}

DOMINO_HD void topk_merge(TopK& into, const TopK& from, int k) {
  softmax_fold(into, from.max, from.sum);
  for (int j = 0; j < from.n; ++j) topk_insert(into, k, from.key[j], from.val[j], from.idx[j]);
}

// log softmax of an entry with scaled logit `val` under the row's (max, sum).
DOMINO_HD float log_q(const TopK& t, float val) {
  return det::sub(det::sub(val, t.max), det::log(t.sum));
}

// Stream of a level's noise: chain step i (1-based proposal), or the expanded tree node.
DOMINO_HD uint32_t noise_stream(bool tree, int32_t proposal, int32_t node) {
  return tree ? rng::stream_id(rng::kDraftTree, uint32_t(node))
              : rng::stream_id(rng::kDraftChain, uint32_t(proposal));
}

// Largest frontier (nodes per request per level) any level can have.
inline int64_t max_frontier(const RolloutParams& p) {
  int64_t f = 1, best = 1;
  for (int d = 0; d < p.depth; ++d) {
    f = f * p.topk < p.budget ? f * p.topk : p.budget;
    if (f > best) best = f;
  }
  return best;
}

// CPU: the whole rollout. `parallel_for(n, grain, fn)` runs fn(begin, end) over [0, n) on the
// caller's thread pool (the torch binding passes at::parallel_for); null runs serially.
using ParallelFor =
    std::function<void(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn)>;
void rollout_cpu(const RolloutParams& p, const ParallelFor& parallel_for);

// ---- packed W2 (CPU) --------------------------------------------------------------------------
// W2 [V, E] bf16 regrouped so that one 64-byte vector holds 16 vocabulary rows at one pair of
// columns: word (g, j, l) = W2[16g + l][2j] | W2[16g + l][2j + 1] << 16, for groups g <
// ceil(V / 16), pairs j < ceil(E / 2), lanes l < 16 (rows >= V and the column past an odd E are
// zero). The vocabulary pass then needs no horizontal sums: one vdpbf16ps per pair of columns
// scores 16 rows, with the activation pair broadcast. Same size as W2 (77.8 MB for Qwen3-8B).
constexpr int64_t kPackRows = 16;
inline int64_t packed_w2_groups(int64_t V) { return (V + kPackRows - 1) / kPackRows; }
inline int64_t packed_w2_pairs(int64_t E) { return (E + 1) / 2; }
// Whether this CPU runs the packed kernel (AVX512_BF16, and DOMINO_DISABLE_AVX512BF16 /
// DOMINO_DISABLE_AVX512 unset); elsewhere a given packed copy is ignored and W2 is read.
bool cpu_uses_packed_w2();
// Packs groups [g0, g1) of W2 (row-major, contiguous) into `packed` (the whole packed array).
void pack_w2_bf16(const uint16_t* w2, int64_t V, int64_t E, int64_t g0, int64_t g1, uint32_t* packed);


#if defined(DOMINO_WITH_CUDA) || defined(__CUDACC__)
// CUDA: bytes of device workspace `rollout_cuda` needs, and the launch sequence (no host sync,
// fixed launch shapes: CUDA-graph capturable). `workspace` must be 256-byte aligned.
size_t rollout_cuda_workspace_bytes(const RolloutParams& p);
int rollout_cuda(const RolloutParams& p, void* workspace, void* stream);
#endif

}  // namespace rollout
}  // namespace domino
