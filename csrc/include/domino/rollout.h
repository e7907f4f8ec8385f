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
// The chain is run as a tree with topk = 1 (one expanded node per request per depth), so chain
// and tree share one engine: per depth, (1) m = silu(zp + W1h·h) for every expanded row, (2) one
// pass over W2 that reads every weight row once for all rows of the depth (weight-stationary),
// fused with the base-logit add, the online (max, sum-exp) and the per-row top-k / Gumbel top-k,
// (3) a merge of the per-chunk partials, (4) the children join the request's candidate pool and
// the beam of the next depth is chosen (child_scores, rank_within), (5) the GRU cell of every
// beam node and one GEMV pass [W1h | W_hh] · h_new; at the end the budget selection and the emit
// step (emit_tree / emit_chain) are the shared routines below.
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
constexpr int64_t kMaxTreeBudget = 4096;  // largest tree budget (output nodes besides the anchor)
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
  int32_t topk = 1;    // tree fan-out and beam width, 1..kMaxTopK (chain: 1)
  int32_t budget = 0;  // tree: nodes emitted besides the anchor, 1..kMaxTreeBudget (chain: N)
  // Chain only: per-request shortlist [B, num_candidates] of vocab ids (null = full vocabulary).
  // Optional q rows fp32: chain [B, N, V] (row i-1 = proposal i's distribution); tree
  // [B, budget + 1, V] (row n = the distribution output node n's children were drawn from, zeros
  // for a node that was not expanded and for padding).
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

// ---- tree policy, selection and emit (shared by the CPU and CUDA kernels) --------------------
// Dynamic tree (EAGLE-2 style, per-branch GRU) with a pinned spine: every generated node is kept
// in a per-request candidate pool in generation order (depth-major; within a depth by parent pool
// index, then child rank). Per depth the `beam` (= topk) best nodes of the newest depth are
// expanded, each into its top-k (greedy) or Gumbel-top-k (sampled) children; after the last depth
// the `budget` best pool nodes (plus the anchor) are emitted. "Best" is one strict total order over
// the pool: larger score first, then lower pool index (ranks_before). Scores are sanitised (NaN ->
// -inf) when they are made, so the order is defined for every input (no NaN reaches a comparison).
//
// The spine is the rank-0 path from the anchor: the anchor, then at every depth the first child
// (top-1 greedy, first Gumbel-top-k draw sampled) of the previous spine node. It is what the chain
// rollout drafts (greedy: same tokens, and the same GRU state path, so the same scores), so it is
// pinned: spine nodes rank before every other node, among themselves in depth order. Then the beam
// of every depth contains its spine node, and a budget >= depth emits the whole chain as a root
// path, so greedy verification accepts at least what the chain would; the rest of the budget goes
// to the best off-spine nodes by EAGLE-2's score.
//
// How a node knows it is on the spine: its score is kSpineScore (+inf), the anchor's score. No
// off-spine node can hold +inf: acc(anchor) = 0, acc(child) <= acc(parent), so every acc is <= 0,
// and every off-spine score is clamped to <= acc(parent). So "score == +inf" marks the spine
// exactly, with no extra per-node array, and ranks_before needs no second key: spine nodes tie at
// +inf and the pool index (increasing with depth) puts them in depth order. (The anchor's 0 as the
// marker would not do: an off-spine node whose path probability rounds to 1 in fp32, e.g. a
// sampled sibling after a first draw with q < 2^-25, would tie with it and, by its lower pool
// index, rank before the deeper spine nodes.)
//
// Off-spine scores (child_scores): acc(n) = log of the draft probability of n's path (sum of log
// q, acc(anchor) = 0). Greedy rows: score = acc (EAGLE-2). Sampled rows: the score of sibling j is
// acc(parent) + log(1 - sum_{l<j} q(x_l)) (the draft's probability that verification reaches
// sibling j), which depends on the earlier siblings only, never on x_j's own value: the kept
// children of a node stay a prefix of its without-replacement draw whose length does not look at
// the drawn token, which is what rejection without replacement (verify rule 3) needs to stay
// lossless (the spine child is draw 0, kept whenever its depth is within the budget). Either way an
// off-spine child's score is clamped to min(parent score, previous sibling score, acc(parent)): ties
// go to the lower pool index (parents and earlier siblings come first), so any prefix of the order
// is closed under "parent of" and "earlier sibling of". The emitted set is therefore
// ancestor-closed and holds a draw-order prefix of every node's children.
constexpr float kSpineScore = det::kInf;  // score of the anchor and of every spine node
DOMINO_HD bool on_spine(float score) { return score == kSpineScore; }
DOMINO_HD float sanitize_score(float x) { return det::is_nan(x) ? -det::kInf : x; }
DOMINO_HD float min_score(float a, float b) { return b < a ? b : a; }

DOMINO_HD bool ranks_before(float score_a, int32_t a, float score_b, int32_t b) {
  return score_a > score_b || (score_a == score_b && a < b);
}

// Nodes of [begin, end) that rank before node c, counted up to `limit` (c is selected among the
// best `limit` of the range iff the result is < limit).
DOMINO_HD int32_t rank_within(const float* score, int32_t begin, int32_t end, int32_t c, int32_t limit) {
  int32_t r = 0;
  const float sc = score[c];
  for (int32_t o = begin; o < end && r < limit; ++o)
    if (o != c && ranks_before(score[o], o, sc, c)) ++r;
  return r;
}

// Scores of the n children (in rank order) of an expanded node, from their log q under the
// node's distribution. Writes acc[j] (sanitised, <= parent_acc) and score[j]: kSpineScore for the
// rank-0 child of a spine node (parent_score == kSpineScore), otherwise sanitised and
// <= min(parent_acc, parent_score, score[j - 1]), hence <= 0.
DOMINO_HD void child_scores(float parent_acc, float parent_score, bool sampled, const float* log_q,
                            int n, float* acc, float* score) {
  const bool spine = on_spine(parent_score);
  float prev = min_score(parent_score, parent_acc), rem = 1.0f;
  for (int j = 0; j < n; ++j) {
    const float a = min_score(parent_acc, sanitize_score(det::add(parent_acc, log_q[j])));
    const float gain = sampled ? det::log(rem > 0.0f ? rem : 0.0f) : log_q[j];
    const float s = spine && j == 0 ? kSpineScore : min_score(prev, sanitize_score(det::add(parent_acc, gain)));
    acc[j] = a;
    score[j] = s;
    if (!on_spine(s)) prev = s;
    rem = det::sub(rem, det::exp(log_q[j]));
  }
}

// Lays out one request's selected pool nodes (keep[c] != 0; node 0 = the anchor, kept) in
// verification order: pool order, which puts parents before children and siblings together in
// draw order. Writes M output nodes (tokens / parents / q, padding -1 / -1 / 0) and, when
// `source` is given, the pool index of each output node (-1 for padding). `out_id` is [n]
// scratch. A kept node whose parent is not kept cannot occur with keep from select_best (closure);
// it would be skipped. Never writes more than M nodes. Returns the number of nodes written.
DOMINO_HD int32_t emit_tree(const int64_t* tok, const int32_t* par, const float* q,
                            const uint8_t* keep, int32_t n, int32_t M, int32_t* out_id,
                            int64_t* tokens, int64_t* parents, float* q_out, int32_t* source) {
  int32_t id = 0;
  for (int32_t c = 0; c < n; ++c) {
    out_id[c] = -1;
    if (!keep[c] || id >= M) continue;
    const int32_t pp = c == 0 ? -1 : (par[c] >= 0 && par[c] < c ? out_id[par[c]] : -1);
    if (c > 0 && pp < 0) continue;
    out_id[c] = id;
    tokens[id] = tok[c];
    parents[id] = pp;
    q_out[id] = q[c];
    if (source) source[id] = c;
    ++id;
  }
  for (int32_t j = id; j < M; ++j) {
    tokens[j] = -1;
    parents[j] = -1;
    q_out[j] = 0.0f;
    if (source) source[j] = -1;
  }
  return id;
}

// The chain's output: pool node i (1..n-1) is proposal i; proposals past the pool are -1 / q 0.
DOMINO_HD void emit_chain(const int64_t* tok, const float* q, int32_t n, int32_t N, int64_t* tokens,
                          float* q_out) {
  for (int32_t i = 1; i <= N; ++i) {
    tokens[i - 1] = i < n ? tok[i] : -1;
    q_out[i - 1] = i < n ? q[i] : 0.0f;
  }
}

// Expanded nodes per request per depth (the beam), pool and state capacities per request.
inline int64_t beam_width(const RolloutParams& p) { return p.tree ? p.topk : 1; }
inline int64_t pool_capacity(const RolloutParams& p) {
  return 1 + int64_t(p.depth) * p.topk * beam_width(p);
}
inline int64_t state_capacity(const RolloutParams& p) { return 1 + int64_t(p.depth) * beam_width(p); }

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
