// Binding of the Domino rollout ops (domino/rollout.h): domino_rollout (chain), domino_tree_rollout,
// build_gru_table and pack_w2. Argument checks name the argument; CPU runs the framework-free engine on
// at::parallel_for; CUDA runs the kernel sequence on the current stream with a device workspace.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "binding_utils.h"
#include "domino/rollout.h"
#include "domino/rollout_prep.h"

namespace domino {
namespace binding {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct HeadArgs {
  const Tensor& hidden;
  const Tensor& base_logits;
  const Tensor& anchor;
  const Tensor& w_ih;
  const Tensor& w_hh;
  const Tensor& w1;
  const Tensor& w2;
  const Tensor& embedding;
  const OptTensor& gru_table;
  const OptTensor& temperature;
  const OptTensor& seed;
  const OptTensor& offset;
  const OptTensor& w2_packed;
};

// Largest number of proposals (chain), depth and node budget (tree) per request: the engines keep
// per-node arrays of this size and hold the counts in 32 bits. One limit, the core's.
constexpr int64_t kMaxNodes = rollout::kMaxTreeBudget;

// The packed W2 layout's shape for W2 [V, E].
std::vector<int64_t> packed_w2_shape(int64_t V, int64_t E) {
  return {rollout::packed_w2_groups(V), rollout::packed_w2_pairs(E), rollout::kPackRows};
}

void check_weight(const Tensor& t, const Tensor& hidden, int64_t rows, int64_t cols,
                  const char* op, const char* arg, const char* rows_what, const char* cols_what) {
  check_same_device(t, hidden, op, arg, "hidden");
  check_dim(t, 2, op, arg);
  if (rows >= 0) check_size(t, 0, rows, op, arg, rows_what);
  check_size(t, 1, cols, op, arg, cols_what);
  DOMINO_CHECK_ARG(t.scalar_type() == hidden.scalar_type(), op, arg,
                   "must have the same dtype as 'hidden' (", hidden.scalar_type(), "), got ",
                   t.scalar_type());
  check_contiguous(t, op, arg);
}

// Validates everything the chain and tree ops share and fills the params (not the outputs).
rollout::RolloutParams common_params(const HeadArgs& x, int64_t depth, bool shift_label,
                                     int64_t pure_prefix_len, const char* op,
                                     const char* depth_arg) {
  const Tensor& hidden = x.hidden;
  check_device_supported(hidden, op, "hidden");
  check_dim(hidden, 3, op, "hidden");
  const DType wdtype = float_dtype(hidden, op, "hidden");
  DOMINO_CHECK_ARG(hidden.stride(2) == 1, op, "hidden", "must have unit stride in the hidden dimension");
  const int64_t B = hidden.size(0), S = hidden.size(1), H = hidden.size(2);
  DOMINO_CHECK_ARG(B > 0 && S > 0 && H > 0, op, "hidden", "must be non-empty, got shape ", shape_str(hidden));

  check_dim(x.w_ih, 2, op, "w_ih");
  DOMINO_CHECK_ARG(x.w_ih.size(0) > 0 && x.w_ih.size(0) % 3 == 0, op, "w_ih",
                   "must have shape [3G, H] (rows a positive multiple of 3), got shape ", shape_str(x.w_ih));
  const int64_t G = x.w_ih.size(0) / 3;
  check_weight(x.w_ih, hidden, 3 * G, H, op, "w_ih", "3G", "H, from 'hidden'");
  check_weight(x.w_hh, hidden, 3 * G, G, op, "w_hh", "3G, from 'w_ih'", "G, from 'w_ih'");
  check_dim(x.w1, 2, op, "w1");
  const int64_t E = x.w1.size(0);
  DOMINO_CHECK_ARG(E > 0, op, "w1", "must have a non-empty first dimension E, got shape ", shape_str(x.w1));
  check_weight(x.w1, hidden, E, H + G, op, "w1", "E", "H + G, from 'hidden' and 'w_ih'");
  DOMINO_CHECK_ARG(hidden.is_cpu() || E <= rollout::kCudaMaxE, op, "w1", "must have E <= ",
                   rollout::kCudaMaxE, " rows on CUDA (the fused kernel keeps a W2 row in registers), got ", E);
  check_dim(x.w2, 2, op, "w2");
  const int64_t V = x.w2.size(0);
  DOMINO_CHECK_ARG(V > 0 && V < (int64_t(1) << 31), op, "w2", "must have 0 < V < 2^31 rows, got shape ", shape_str(x.w2));
  check_weight(x.w2, hidden, V, E, op, "w2", "V", "E, from 'w1'");
  check_weight(x.embedding, hidden, V, H, op, "embedding", "V, from 'w2'", "H, from 'hidden'");
  if (x.gru_table) check_weight(*x.gru_table, hidden, V, 3 * G, op, "gru_table", "V, from 'w2'", "3G, from 'w_ih'");
  if (x.w2_packed) {
    const Tensor& pk = *x.w2_packed;
    check_tensor(pk, op, "w2_packed");
    DOMINO_CHECK_ARG(pk.is_cpu() && hidden.is_cpu(), op, "w2_packed",
                     "is a CPU layout (from domino::pack_w2); pass None on ", hidden.device());
    DOMINO_CHECK_ARG(wdtype == DType::BF16, op, "w2_packed", "needs bf16 weights, got ", hidden.scalar_type());
    DOMINO_CHECK_ARG(pk.scalar_type() == at::kInt, op, "w2_packed", "must be int32 (from domino::pack_w2), got ",
                     pk.scalar_type());
    DOMINO_CHECK_ARG(pk.sizes() == at::IntArrayRef(packed_w2_shape(V, E)), op, "w2_packed",
                     "must have shape [ceil(V/16), ceil(E/2), 16] = ", at::IntArrayRef(packed_w2_shape(V, E)),
                     " for 'w2' ", shape_str(x.w2), " (from domino::pack_w2), got ", shape_str(pk));
    check_contiguous(pk, op, "w2_packed");
  }

  const Tensor& base = x.base_logits;
  check_same_device(base, hidden, op, "base_logits", "hidden");
  check_dim(base, 3, op, "base_logits");
  const DType bdtype = float_dtype(base, op, "base_logits");
  check_size(base, 0, B, op, "base_logits", "batch, from 'hidden'");
  check_size(base, 2, V, op, "base_logits", "V, from 'w2'");
  DOMINO_CHECK_ARG(base.stride(2) == 1, op, "base_logits", "must have unit stride in the vocabulary dimension");
  check_vector(x.anchor, B, at::kLong, hidden, op, "anchor", "hidden");

  const int64_t max_depth = std::min<int64_t>(shift_label ? S : S - 1, kMaxNodes);
  DOMINO_CHECK_ARG(depth >= 1 && depth <= max_depth, op, depth_arg, "must be in [1, ", max_depth,
                   "] (the block has S = ", S, " slots, shift_label = ", shift_label,
                   ", at most ", kMaxNodes, "), got ", depth);
  DOMINO_CHECK_ARG(base.size(1) >= depth, op, "base_logits", "must hold at least ", depth,
                   " proposals in dimension 1, got shape ", shape_str(base));
  DOMINO_CHECK_ARG(pure_prefix_len >= 0, op, "pure_prefix_len", "must be >= 0, got ", pure_prefix_len);

  if (x.temperature) {
    check_vector(*x.temperature, B, at::kFloat, hidden, op, "temperature", "hidden");
    DOMINO_CHECK_ARG(x.seed.has_value(), op, "seed", "is required when 'temperature' is given");
    DOMINO_CHECK_ARG(x.offset.has_value(), op, "offset", "is required when 'temperature' is given");
  }
  if (x.seed) check_vector(*x.seed, B, at::kLong, hidden, op, "seed", "hidden");
  if (x.offset) check_vector(*x.offset, B, at::kLong, hidden, op, "offset", "hidden");

  if (hidden.is_cpu()) {  // values are readable here: reject them instead of defining a result
    const int64_t* a = x.anchor.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      DOMINO_CHECK_ARG(a[b] >= 0 && a[b] < V, op, "anchor", "must hold token ids in [0, ", V,
                       "), got ", a[b], " at row ", b);
    if (x.temperature) {
      const float* t = x.temperature->data_ptr<float>();
      for (int64_t b = 0; b < B; ++b)
        DOMINO_CHECK_ARG(t[b] >= 0.0f, op, "temperature", "must be >= 0 (0 means greedy), got ",
                         t[b], " at row ", b);
    }
  }

  rollout::RolloutParams p;
  p.hidden = hidden.data_ptr();
  p.hidden_stride_b = hidden.stride(0);
  p.hidden_stride_s = hidden.stride(1);
  p.base = base.data_ptr();
  p.base_dtype = bdtype;
  p.base_stride_b = base.stride(0);
  p.base_stride_n = base.stride(1);
  p.anchor = x.anchor.data_ptr<int64_t>();
  p.w_ih = x.w_ih.data_ptr();
  p.w_hh = x.w_hh.data_ptr();
  p.w1 = x.w1.data_ptr();
  p.w2 = x.w2.data_ptr();
  p.embedding = x.embedding.data_ptr();
  p.gru_table = x.gru_table ? x.gru_table->data_ptr() : nullptr;
  p.w2_packed = x.w2_packed ? reinterpret_cast<const uint32_t*>(x.w2_packed->data_ptr<int32_t>()) : nullptr;
  p.wdtype = wdtype;
  p.B = B; p.S = S; p.H = H; p.G = G; p.E = E; p.V = V;
  p.depth = checked_int32(depth, op, depth_arg);
  p.pure_prefix = int32_t(std::min<int64_t>(pure_prefix_len, depth));
  p.shift_label = shift_label;
  p.temperature = x.temperature ? x.temperature->data_ptr<float>() : nullptr;
  p.seed = x.seed ? x.seed->data_ptr<int64_t>() : nullptr;
  p.offset = x.offset ? x.offset->data_ptr<int64_t>() : nullptr;
  return p;
}

void run(const rollout::RolloutParams& p, const Tensor& like, const char* op) {
  if (like.is_cpu()) {
    rollout::rollout_cpu(p, [](int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
      at::parallel_for(0, n, grain, fn);
    });
    return;
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(like.device());
  const size_t bytes = rollout::rollout_cuda_workspace_bytes(p);
  Tensor ws = at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
  check_cuda_status(rollout::rollout_cuda(p, ws.data_ptr(), current_stream(like)), op);
#else
  (void)op;
#endif
}

// The candidate shortlist (domino/rollout_prep.h) on the device of `like`.
void build_shortlist(const rollout::ShortlistParams& sp, const Tensor& like, const char* op) {
  if (like.is_cpu()) {
    at::parallel_for(0, sp.B, 1, [&](int64_t b0, int64_t b1) { rollout::shortlist_cpu(sp, b0, b1); });
    return;
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(like.device());
  DOMINO_CHECK_ARG(sp.B * sp.V <= int64_t(INT32_MAX), op, "candidates", "needs batch * V < 2^31 on CUDA, got ",
                   sp.B * sp.V);
  const size_t bytes = rollout::shortlist_cuda_workspace_bytes(sp.B, sp.V);
  Tensor ws = at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
  check_cuda_status(rollout::shortlist_cuda(sp, ws.data_ptr(), bytes, current_stream(like)), op);
#else
  (void)op;
#endif
}

std::tuple<Tensor, Tensor, Tensor> domino_rollout(
    const Tensor& hidden, const Tensor& base_logits, const Tensor& anchor, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& w1, const Tensor& w2, const Tensor& embedding,
    const OptTensor& gru_table, int64_t num_proposals, bool shift_label, int64_t pure_prefix_len,
    const OptTensor& temperature, const OptTensor& seed, const OptTensor& offset,
    bool return_q_rows, int64_t candidates, const OptTensor& w2_packed) {
  constexpr const char* kOp = "domino::domino_rollout";
  HeadArgs x{hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table, temperature, seed, offset, w2_packed};
  rollout::RolloutParams p = common_params(x, num_proposals, shift_label, pure_prefix_len, kOp, "num_proposals");
  DOMINO_CHECK_ARG(candidates >= 0, kOp, "candidates", "must be >= 0 (0 = exact full vocabulary), got ", candidates);
  const int64_t B = p.B, N = num_proposals, V = p.V;
  DOMINO_CHECK_ARG(hidden.is_cpu() || B <= rollout::kCudaMaxRows, kOp, "hidden", "batch must be <= ",
                   rollout::kCudaMaxRows, " on CUDA, got ", B);
  p.tree = false;
  p.topk = 1;
  p.budget = checked_int32(N, kOp, "num_proposals");

  Tensor tokens = at::empty({B, N}, hidden.options().dtype(at::kLong));
  Tensor q = at::empty({B, N}, hidden.options().dtype(at::kFloat));
  Tensor q_rows = return_q_rows ? at::zeros({B, N, V}, hidden.options().dtype(at::kFloat))
                                : at::empty({0}, hidden.options().dtype(at::kFloat));
  Tensor shortlist;
  if (candidates > 0 && candidates < V && N > p.pure_prefix) {
    shortlist = at::empty({B, candidates}, hidden.options().dtype(at::kInt));
    rollout::ShortlistParams sp;
    sp.base = p.base;
    sp.base_dtype = p.base_dtype;
    sp.base_stride_b = p.base_stride_b;
    sp.base_stride_n = p.base_stride_n;
    sp.B = B;
    sp.V = V;
    sp.first = p.pure_prefix;
    sp.end = int32_t(N);
    sp.K = int32_t(candidates);
    sp.out = shortlist.data_ptr<int32_t>();
    build_shortlist(sp, hidden, kOp);
    p.shortlist = sp.out;
    p.num_candidates = sp.K;
  }
  p.q_rows = return_q_rows ? q_rows.data_ptr<float>() : nullptr;
  p.tokens = tokens.data_ptr<int64_t>();
  p.q = q.data_ptr<float>();
  run(p, hidden, kOp);
  return {tokens, q, q_rows};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> domino_tree_rollout(
    const Tensor& hidden, const Tensor& base_logits, const Tensor& anchor, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& w1, const Tensor& w2, const Tensor& embedding,
    const OptTensor& gru_table, bool shift_label, int64_t pure_prefix_len, int64_t topk,
    int64_t depth, int64_t budget, const OptTensor& temperature, const OptTensor& seed,
    const OptTensor& offset, const OptTensor& w2_packed, bool return_q_rows) {
  constexpr const char* kOp = "domino::domino_tree_rollout";
  HeadArgs x{hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table, temperature, seed, offset, w2_packed};
  rollout::RolloutParams p = common_params(x, depth, shift_label, pure_prefix_len, kOp, "depth");
  DOMINO_CHECK_ARG(topk >= 1 && topk <= rollout::kMaxTopK, kOp, "topk", "must be in [1, ",
                   rollout::kMaxTopK, "], got ", topk);
  DOMINO_CHECK_ARG(budget >= 1 && budget <= kMaxNodes, kOp, "budget", "must be in [1, ", kMaxNodes,
                   "], got ", budget);
  const int64_t B = p.B, M = budget + 1, V = p.V;
  p.tree = true;
  p.topk = int32_t(topk);
  p.budget = checked_int32(budget, kOp, "budget");
  DOMINO_CHECK_ARG(hidden.is_cpu() || B * rollout::beam_width(p) <= rollout::kCudaMaxRows, kOp,
                   "topk", "gives batch * beam = ", B * rollout::beam_width(p),
                   " expanded rows per depth; CUDA supports <= ", rollout::kCudaMaxRows);
  Tensor tokens = at::empty({B, M}, hidden.options().dtype(at::kLong));
  Tensor parents = at::empty({B, M}, hidden.options().dtype(at::kLong));
  Tensor q = at::empty({B, M}, hidden.options().dtype(at::kFloat));
  Tensor num_nodes = at::empty({B}, hidden.options().dtype(at::kLong));
  Tensor q_rows = return_q_rows ? at::empty({B, M, V}, hidden.options().dtype(at::kFloat))
                                : at::empty({0}, hidden.options().dtype(at::kFloat));
  p.tokens = tokens.data_ptr<int64_t>();
  p.parents = parents.data_ptr<int64_t>();
  p.q = q.data_ptr<float>();
  p.num_nodes = num_nodes.data_ptr<int64_t>();
  p.q_rows = return_q_rows ? q_rows.data_ptr<float>() : nullptr;
  run(p, hidden, kOp);
  return {tokens, parents, q, num_nodes, q_rows};
}

// table = embedding @ w_ih^T, accumulated in fp32 and rounded once to the weight dtype
// (domino/rollout_prep.h).
Tensor build_gru_table(const Tensor& embedding, const Tensor& w_ih) {
  constexpr const char* kOp = "domino::build_gru_table";
  check_device_supported(embedding, kOp, "embedding");
  check_dim(embedding, 2, kOp, "embedding");
  const DType dtype = float_dtype(embedding, kOp, "embedding");
  check_same_device(w_ih, embedding, kOp, "w_ih", "embedding");
  check_dim(w_ih, 2, kOp, "w_ih");
  check_size(w_ih, 1, embedding.size(1), kOp, "w_ih", "H, from 'embedding'");
  DOMINO_CHECK_ARG(embedding.size(0) > 0, kOp, "embedding", "must have V >= 1 rows, got shape ",
                   shape_str(embedding));
  DOMINO_CHECK_ARG(w_ih.size(0) > 0 && w_ih.size(0) % 3 == 0, kOp, "w_ih",
                   "must have shape [3G, H] (rows a positive multiple of 3), got shape ", shape_str(w_ih));
  DOMINO_CHECK_ARG(w_ih.scalar_type() == embedding.scalar_type(), kOp, "w_ih",
                   "must have the same dtype as 'embedding' (", embedding.scalar_type(), "), got ",
                   w_ih.scalar_type());
  const Tensor emb = embedding.contiguous(), w = w_ih.contiguous();
  rollout::GruTableParams p;
  p.embedding = emb.data_ptr();
  p.w_ih = w.data_ptr();
  p.dtype = dtype;
  p.V = emb.size(0);
  p.H = emb.size(1);
  p.G3 = w.size(0);
  Tensor table = at::empty({p.V, p.G3}, embedding.options());
  p.table = table.data_ptr();
  if (embedding.is_cpu()) {
    at::parallel_for(0, p.V, 256, [&](int64_t v0, int64_t v1) { rollout::build_gru_table_cpu(p, v0, v1); });
    return table;
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(embedding.device());
  check_cuda_status(rollout::build_gru_table_cuda(p, current_stream(embedding)), kOp);
#endif
  return table;
}

// W2 [V, E] bf16 -> the packed layout (rollout.h), on the CPU, threaded over groups.
Tensor pack_w2(const Tensor& w2) {
  constexpr const char* kOp = "domino::pack_w2";
  check_tensor(w2, kOp, "w2");
  DOMINO_CHECK_ARG(w2.is_cpu(), kOp, "w2", "must be a CPU tensor (the packed layout is for the CPU kernel), got ",
                   w2.device());
  check_dim(w2, 2, kOp, "w2");
  DOMINO_CHECK_ARG(w2.scalar_type() == at::kBFloat16, kOp, "w2",
                   "must be bfloat16 (the layout holds bf16 pairs for vdpbf16ps), got ", w2.scalar_type());
  const int64_t V = w2.size(0), E = w2.size(1);
  DOMINO_CHECK_ARG(V > 0 && E > 0 && V < (int64_t(1) << 31), kOp, "w2", "must be non-empty with V < 2^31, got shape ",
                   shape_str(w2));
  const Tensor src = w2.contiguous();
  Tensor packed = at::empty(packed_w2_shape(V, E), w2.options().dtype(at::kInt));
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src.data_ptr<at::BFloat16>());
  uint32_t* d = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
  at::parallel_for(0, rollout::packed_w2_groups(V), 64,
                   [&](int64_t g0, int64_t g1) { rollout::pack_w2_bf16(s, V, E, g0, g1, d); });
  return packed;
}

}  // namespace

// pack_w2 raises on CUDA tensors (a CPU layout).
DOMINO_IMPL_ALL_KEYS(m.impl("pack_w2", &pack_w2); m.impl("domino_rollout", &domino_rollout);
                     m.impl("domino_tree_rollout", &domino_tree_rollout);
                     m.impl("build_gru_table", &build_gru_table);)

}  // namespace binding
}  // namespace domino
