// domino/verify.h: lossless verification of drafted chains and trees (greedy and stochastic).
// This header is the contract; domino_kernels/reference/verify.py is its executable spec and
// docs/verify.md explains the rules and their proofs of losslessness.
//
// A request is a tree of `num_nodes` nodes: node 0 is the root (the last committed token, not
// verified), parents[i] < i, draft_tokens[i] is the token of node i, and logits row i is the target
// distribution of the token that follows node i. A chain is parents[i] = i - 1. Children of a
// node are visited in increasing node index ("sibling order").
//
// Processed target at a node (temperature T > 0): exactly domino::sample's filter (sampling.h):
// s_v = l_v * (1/T) (1/T rounded once), m = max s, top-k then top-p keep set K, and the
// fixed-point masses
//   w_v = fixed_mass(exp(s_v - m)) for v in K, 0 otherwise;  W = sum_v w_v  (exact uint64).
// The processed target is p_v = w_v / W. Every probability below is an exact integer mass over
// that scale, so every decision is exact, reduction-order independent and bit-identical on the
// CPU and the GPU.
//
// Rules (rule argument; a request with temperature 0 is verified greedily whatever the rule):
//   0 greedy: t = argmax of the raw logits (ties to the lowest index); descend into the first
//     child whose token is t; otherwise emit t (correction, or bonus at a leaf).
//   1 target-only (sample and match): draw y ~ p with one exact integer inverse-CDF draw in which
//     the distinct child tokens come first (ascending token), then the other tokens (ascending);
//     descend into the first child with token y, else emit y. Lossless for any draft; the law
//     does not depend on sibling order.
//   2 rejection, children i.i.d. with replacement from q (SpecInfer); 3 rejection, children drawn
//     without replacement (RSD). q = the draft row at the parent. Sibling j (0-based) with token x
//     is tested against the residual R_j (R_0 = w, M_0 = W):
//       q_j(v) = q(v)                                   (rule 2)
//       q_j(v) = q(v) [v not in x_0..x_{j-1}] / (1 - sum_{l<j} q(x_l))   (rule 3)
//       Q_j(v) = to_fixed(q_j(v) * M_j)  (a deterministic double product, truncated)
//       accept iff u * Q_j(x) < R_j(x)   (u: a 52-bit uniform, double math)
//       on reject: R_{j+1}(v) = R_j(v) - min(R_j(v), Q_j(v)),  M_{j+1} = sum_v R_{j+1}(v).
//     If every sibling is rejected (or at a leaf) the emitted token is an exact integer
//     inverse-CDF draw from R_k (from w if R_k is all zero, an event of probability ~2^-40).
//     A chain is the single-sibling case: Leviathan/Chen.
//   draft_probs [B,T,V] gives full q rows (q row i = the distribution node i's children were drawn
//   from). draft_token_probs [B,T] alone (q of node i's token under its parent's distribution)
//   defines q at a node as supported on its children's tokens: exact for deterministic drafts
//   (q(x) = 1: greedy or top-1 drafters) and for any draft whose mass lies on the drafted
//   tokens; other drafts must pass the full rows.
//
// RNG (philox.h): per request (seed, offset); the coin of child node c is the 52-bit uniform of
// stream (kVerifyCoin, c); the inverse-CDF draw at node i uses the 64-bit word of stream
// (kVerifyResidual, i); both take elements 0 and 1 of their stream: hi = lane 0, lo = lane 1.
//
// Outputs (fixed shapes, no host sync): accept_len [B] = number of accepted draft tokens;
// accept_path [B,T] = accepted node indices starting with 0, then -1; emitted [B,T] = accepted
// draft tokens then the bonus/correction token (accept_len + 1 entries), then -1.
// Invalid requests (status != kOk) get accept_len = -1 and all -1 rows: num_nodes outside [1, T],
// parents[i] outside [0, i), a token id outside [0, V) among nodes 1..n-1, bad temperature / top-k
// / top-p, q of a drafted token not > 0 (rules 2 and 3), or a NaN / +inf / all -inf logits row at
// a node the walk visits. Ids read from memory are validated before use: never an out-of-bounds
// access. The CPU binding turns the status into an exception naming the argument.
#pragma once

#include "domino/common.h"
#include "domino/numerics.h"
#include "domino/philox.h"

namespace domino {
namespace verify {

enum Rule : int32_t { kGreedy = 0, kTargetOnly = 1, kRejection = 2, kRejectionNoReplacement = 3 };

enum Status : int32_t {
  kOk = 0,
  kBadNumNodes = 1,
  kBadParent = 2,
  kBadToken = 3,
  kBadLogits = 4,
  kBadDraftProb = 5,
  kBadParams = 6,
};

// Per-request tree size limit (the CUDA kernel keeps per-node walk state in shared memory).
constexpr int64_t kMaxNodes = 1024;

struct VerifyParams {
  const int64_t* draft_tokens = nullptr;  // [batch, nodes] contiguous
  const int64_t* parents = nullptr;       // [batch, nodes] contiguous
  const int64_t* num_nodes = nullptr;     // [batch]
  const void* logits = nullptr;           // [batch, nodes, vocab], unit stride in vocab
  DType dtype = DType::F32;
  int64_t logits_stride_b = 0, logits_stride_t = 0;
  int64_t batch = 0, nodes = 0, vocab = 0;
  const float* temperature = nullptr;        // [batch]
  const int64_t* top_k = nullptr;            // [batch] or null
  const float* top_p = nullptr;              // [batch] or null
  const float* draft_probs = nullptr;        // [batch, nodes, vocab] contiguous fp32, or null
  const float* draft_token_probs = nullptr;  // [batch, nodes] contiguous fp32, or null
  const int64_t* seed = nullptr;             // [batch]
  const int64_t* offset = nullptr;           // [batch]
  int32_t rule = kGreedy;
  int64_t* accept_len = nullptr;   // [batch]
  int64_t* accept_path = nullptr;  // [batch, nodes]
  int64_t* emitted = nullptr;      // [batch, nodes]
  int32_t* status = nullptr;       // [batch] or null: why a request is invalid
  int64_t* status_node = nullptr;  // [batch] or null: the node (or -1) the status refers to
  // CUDA only: caller-owned scratch of kWorkspaceWords * batch * nodes uint64 for the
  // vocabulary-split pre-pass (per row: argmax or max key, flags, total mass), or null to skip
  // it. Caller-owned so that the launches stay CUDA-graph capturable.
  uint64_t* workspace = nullptr;
};

constexpr int64_t kWorkspaceWords = 3;
// The CUDA binding passes a workspace (runs the pre-pass) up to this batch size: below it one
// block per request would leave most of an H100/H200's 132 SMs idle.
constexpr int64_t kPrepassMaxBatch = 16;

// ---- exact helpers shared by both devices ---------------------------------------------------

namespace dd {  // double ops pinned to round-to-nearest (no FMA contraction on the device)
#if defined(__CUDA_ARCH__)
DOMINO_HD double add(double a, double b) { return __dadd_rn(a, b); }
DOMINO_HD double sub(double a, double b) { return __dsub_rn(a, b); }
DOMINO_HD double mul(double a, double b) { return __dmul_rn(a, b); }
DOMINO_HD double div(double a, double b) { return __ddiv_rn(a, b); }
DOMINO_HD double from_u64(uint64_t x) { return __ull2double_rn(x); }
DOMINO_HD uint64_t trunc_u64(double x) { return __double2ull_rz(x); }
#else
DOMINO_HD double add(double a, double b) { return a + b; }
DOMINO_HD double sub(double a, double b) { return a - b; }
DOMINO_HD double mul(double a, double b) { return a * b; }
DOMINO_HD double div(double a, double b) { return a / b; }
DOMINO_HD double from_u64(uint64_t x) { return double(x); }
DOMINO_HD uint64_t trunc_u64(double x) { return uint64_t(x); }
#endif
}  // namespace dd

// Uniform in (0, 1) on the 2^-52 grid midpoints: (k + 1/2) 2^-52, exact in double.
DOMINO_HD double uniform52(uint64_t bits) {
  return dd::add(dd::mul(double(bits >> 12), 2.220446049250313e-16), 1.1102230246251565e-16);
}

constexpr double kFixedCap = 4611686018427387904.0;  // 2^62: keeps Q finite and subtractable

// Q = trunc(q * scale) with q clamped to [0, 1] (NaN and q <= 0 give 0; inf scale gives the cap).
DOMINO_HD uint64_t to_fixed(float q, double scale) {
  if (!(q > 0.0f)) return 0;
  const double qd = q < 1.0f ? double(q) : 1.0;
  const double x = dd::mul(qd, scale);
  if (!(x < kFixedCap)) return uint64_t(kFixedCap);
  return dd::trunc_u64(x);
}

// accept iff u * Q < R (double math); Q == 0 accepts any R > 0.
DOMINO_HD bool accept_coin(double u, uint64_t Q, uint64_t R) {
  return dd::mul(u, dd::from_u64(Q)) < dd::from_u64(R);
}

// Validates the request's ids and parameters (O(nodes) reads). Returns a Status; `bad_node` is
// the node at fault (or -1).
DOMINO_HD int32_t validate_request(const VerifyParams& p, int64_t b, int64_t& bad_node) {
  bad_node = -1;
  const int64_t T = p.nodes;
  const int64_t n = p.num_nodes[b];
  if (n < 1 || n > T) return kBadNumNodes;
  const float temp = p.temperature[b];
  if (det::is_nan(temp) || temp < 0.0f) return kBadParams;
  if (p.top_k && p.top_k[b] < 0) return kBadParams;
  if (p.top_p) {
    const float tp = p.top_p[b];
    if (det::is_nan(tp) || !(tp > 0.0f && tp <= 1.0f)) return kBadParams;
  }
  const int64_t* par = p.parents + b * T;
  const int64_t* tok = p.draft_tokens + b * T;
  for (int64_t i = 1; i < n; ++i) {
    bad_node = i;
    if (par[i] < 0 || par[i] >= i) return kBadParent;
    if (tok[i] < 0 || tok[i] >= p.vocab) return kBadToken;
  }
  const bool stochastic_q = (p.rule == kRejection || p.rule == kRejectionNoReplacement) &&
                            temp != 0.0f;
  if (stochastic_q) {
    for (int64_t i = 1; i < n; ++i) {
      bad_node = i;
      const float q = p.draft_probs
                          ? p.draft_probs[(b * T + par[i]) * p.vocab + tok[i]]
                          : p.draft_token_probs[b * T + i];
      if (!(q > 0.0f) || !det::is_finite(q)) return kBadDraftProb;
    }
  }
  bad_node = -1;
  return kOk;
}

// ---- the walk, written once for both devices ------------------------------------------------
//
// `Row` is the device backend. Every method is called by every thread of a CUDA block with the
// same arguments and returns the same value to all of them (block-collective on the GPU, plain
// loops on the CPU), so the decisions below are uniform and identical on both devices:
//   bool load(node, greedy)  prepare logits row `node`; false when the row is invalid
//   int64_t argmax()         greedy target token of the loaded row
//   uint64_t total()         W of the loaded row;  uint64_t mass(v): w_v
//   uint64_t sum(f)          sum over v of f(v);    int64_t find(r, f): smallest v with
//                            f(0) + ... + f(v) > r (-1 if none)
//   bool leader(); void sync();  int64_t* kids, *kid_tok; double* scales  (scratch of `nodes`
//                            entries each: the current node's children, their tokens, the
//                            sibling scales; written by the leader, read by all after sync())

struct Walk {
  const VerifyParams* p;
  int64_t b;
  int64_t node;     // the node whose children are being tested
  int64_t nkids;
  const int64_t* kids;     // children of `node`, in node order
  const int64_t* kid_tok;  // their tokens
  const double* scales;    // scale_l = M_l / (1 - S_l) of the siblings tested so far

  DOMINO_HD int64_t token(int64_t i) const { return p->draft_tokens[b * p->nodes + i]; }

  // q of sibling l's token under the parent's draft distribution.
  DOMINO_HD float kid_q(int64_t l) const {
    const int64_t c = kids[l];
    return p->draft_probs ? p->draft_probs[(b * p->nodes + node) * p->vocab + kid_tok[l]]
                          : p->draft_token_probs[b * p->nodes + c];
  }

  // Index of the first sibling whose token is v (nkids when none).
  DOMINO_HD int64_t first_kid_with(int64_t v) const {
    for (int64_t l = 0; l < nkids; ++l)
      if (kid_tok[l] == v) return l;
    return nkids;
  }

  // q(v) of the parent's draft row.
  DOMINO_HD float q_of(int64_t v, int64_t first) const {
    if (p->draft_probs) return p->draft_probs[(b * p->nodes + node) * p->vocab + v];
    return first < nkids ? p->draft_token_probs[b * p->nodes + kids[first]] : 0.0f;
  }

  // R_j(v) from w_v: the residual after j rejected siblings.
  DOMINO_HD uint64_t residual(uint64_t w, int64_t v, int64_t j) const {
    if (j == 0 || w == 0) return w;
    const int64_t first = first_kid_with(v);
    const float qv = q_of(v, first);
    const bool no_repl = p->rule == kRejectionNoReplacement;
    uint64_t r = w;
    for (int64_t l = 0; l < j && r != 0; ++l) {
      if (no_repl && first < l) break;  // v was drawn before sibling l: q_l(v) = 0 from here on
      const uint64_t Q = to_fixed(qv, scales[l]);
      r -= r < Q ? r : Q;
    }
    return r;
  }
};

// The Row backend's methods are __device__ on the GPU; the HD templates below only ever call them
// from device code there, which nvcc cannot see through templates without this pragma.
#if defined(__CUDACC__)
#define DOMINO_HD_TEMPLATE _Pragma("nv_exec_check_disable")
#else
#define DOMINO_HD_TEMPLATE
#endif

template <class Row>
struct ResidualMass {  // f(v) = R_j(v)
  const Walk* walk;
  Row* row;
  int64_t j;
  DOMINO_HD_TEMPLATE DOMINO_HD uint64_t operator()(int64_t v) const {
    return walk->residual(row->mass(v), v, j);
  }
};

template <class Row>
struct NonChildMass {  // f(v) = w_v unless v is a child token
  const Walk* walk;
  Row* row;
  DOMINO_HD_TEMPLATE DOMINO_HD uint64_t operator()(int64_t v) const {
    return walk->first_kid_with(v) < walk->nkids ? 0 : row->mass(v);
  }
};

DOMINO_HD void write_invalid(const VerifyParams& p, int64_t b, int32_t st, int64_t bad_node) {
  p.accept_len[b] = -1;
  for (int64_t i = 0; i < p.nodes; ++i) {
    p.accept_path[b * p.nodes + i] = -1;
    p.emitted[b * p.nodes + i] = -1;
  }
  if (p.status) p.status[b] = st;
  if (p.status_node) p.status_node[b] = bad_node;
}

// Verifies request b. Returns its Status (outputs already written).
DOMINO_HD_TEMPLATE
template <class Row>
DOMINO_HD int32_t verify_request(const VerifyParams& p, int64_t b, Row& row) {
  int64_t bad_node = -1;
  const int32_t st = validate_request(p, b, bad_node);
  if (st != kOk) {
    if (row.leader()) write_invalid(p, b, st, bad_node);
    return st;
  }
  const int64_t T = p.nodes, n = p.num_nodes[b];
  const bool greedy = p.temperature[b] == 0.0f || p.rule == kGreedy;
  const int32_t rule = greedy ? int32_t(kGreedy) : p.rule;
  const uint64_t seed = uint64_t(p.seed[b]), offset = uint64_t(p.offset[b]);
  const int64_t* par = p.parents + b * T;

  Walk walk{&p, b, 0, 0, row.kids, row.kid_tok, row.scales};
  int64_t len = 0, out_tok = -1;
  for (;;) {
    const int64_t node = walk.node;
    if (!row.load(node, greedy)) {
      if (row.leader()) write_invalid(p, b, kBadLogits, node);
      return kBadLogits;
    }
    // Children of `node` in node order (ids were validated above).
    if (row.leader()) {
      int64_t k = 0;
      for (int64_t i = node + 1; i < n; ++i)
        if (par[i] == node) {
          row.kids[k] = i;
          row.kid_tok[k++] = walk.token(i);
        }
    }
    row.sync();
    int64_t k = 0;
    for (int64_t i = node + 1; i < n; ++i) k += par[i] == node;
    walk.nkids = k;

    int64_t next = -1;
    if (rule == kGreedy) {
      out_tok = row.argmax();
      const int64_t l = walk.first_kid_with(out_tok);
      if (l < k) next = row.kids[l];
    } else if (rule == kTargetOnly) {
      const uint64_t W = row.total();
      const uint64_t bits =
          rng::random_u64(seed, offset, rng::stream_id(rng::kVerifyResidual, uint32_t(node)));
      uint64_t r = rng::uniform_below(bits, W);
      uint64_t child_mass = 0;
      for (int64_t l = 0; l < k; ++l)
        if (walk.first_kid_with(row.kid_tok[l]) == l)
          child_mass += row.mass(row.kid_tok[l]);
      if (r < child_mass) {
        // Distinct child tokens in ascending order: the first block of the inverse CDF.
        int64_t last = -1;
        for (;;) {
          int64_t best = -1;
          for (int64_t l = 0; l < k; ++l) {
            const int64_t t = row.kid_tok[l];
            if (t > last && (best < 0 || t < best)) best = t;
          }
          const uint64_t w = row.mass(best);
          if (r < w) { next = row.kids[walk.first_kid_with(best)]; break; }
          r -= w;
          last = best;
        }
      } else {
        out_tok = row.find(r - child_mass, NonChildMass<Row>{&walk, &row});
      }
    } else {
      uint64_t M = row.total();
      double S = 0.0;  // sum of q of the siblings tested so far (rule 3)
      int64_t j = 0;
      for (; j < k; ++j) {
        const int64_t c = row.kids[j];
        const int64_t x = walk.token(c);
        const float qx = walk.kid_q(j);
        const double rest = dd::sub(1.0, S);  // rule 3: mass of q not yet drawn
        const double scale = rule != kRejectionNoReplacement ? dd::from_u64(M)
                             : rest > 0.0 ? dd::div(dd::from_u64(M), rest)
                                          : double(det::kInf);
        if (row.leader()) row.scales[j] = scale;
        row.sync();
        const uint64_t R = walk.residual(row.mass(x), x, j);
        const bool repeat = rule == kRejectionNoReplacement && walk.first_kid_with(x) < j;
        const uint64_t Q = repeat ? 0 : to_fixed(qx, scale);
        const double u = uniform52(
            rng::random_u64(seed, offset, rng::stream_id(rng::kVerifyCoin, uint32_t(c))));
        if (accept_coin(u, Q, R)) { next = c; break; }
        // Rejected: M_{j+1}. With full rows this is a pass over the vocabulary; with token
        // probabilities only the child tokens change, so only they are revisited.
        if (p.draft_probs) {
          M = row.sum(ResidualMass<Row>{&walk, &row, j + 1});
        } else {
          for (int64_t l = 0; l < k; ++l) {
            const int64_t t = row.kid_tok[l];
            if (walk.first_kid_with(t) != l) continue;
            const uint64_t w = row.mass(t);
            M -= walk.residual(w, t, j) - walk.residual(w, t, j + 1);
          }
        }
        S = dd::add(S, double(qx));
      }
      if (next < 0) {
        const uint64_t r64 = rng::random_u64(seed, offset,
                                        rng::stream_id(rng::kVerifyResidual, uint32_t(node)));
        if (M == 0) {  // residual vanished (quantisation edge): fall back to the target row
          j = 0;
          M = row.total();
        }
        out_tok = row.find(rng::uniform_below(r64, M), ResidualMass<Row>{&walk, &row, j});
      }
    }
    if (next < 0) break;
    ++len;
    if (row.leader()) {
      p.accept_path[b * T + len] = next;
      p.emitted[b * T + len - 1] = walk.token(next);
    }
    walk.node = next;
    row.sync();  // kids are rewritten for the next node
  }
  if (row.leader()) {
    p.accept_len[b] = len;
    p.accept_path[b * T] = 0;
    p.emitted[b * T + len] = out_tok;
    for (int64_t i = len + 1; i < T; ++i) {
      p.accept_path[b * T + i] = -1;
      p.emitted[b * T + i] = -1;
    }
    if (p.status) p.status[b] = kOk;
    if (p.status_node) p.status_node[b] = -1;
  }
  return kOk;
}

// CPU: verify requests [begin, end). Thread-safe for disjoint ranges.
void verify_rows_cpu(const VerifyParams& p, int64_t begin, int64_t end);

#if defined(DOMINO_WITH_CUDA) || defined(__CUDACC__)
// CUDA: one launch for the whole batch on `stream`. Returns cudaSuccess or the launch error.
int verify_cuda(const VerifyParams& p, void* stream);
#endif

}  // namespace verify
}  // namespace domino
