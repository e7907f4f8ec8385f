// Binding of domino::verify: argument checks, output allocation, CPU/CUDA dispatch.
// Semantics and defined results for bad device input: csrc/include/domino/verify.h.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding_utils.h"
#include "domino/sampling.h"
#include "domino/verify.h"

namespace domino {
namespace binding {
namespace {

constexpr const char* kOp = "domino::verify";

void check_node_matrix(const at::Tensor& t, int64_t batch, int64_t nodes, at::ScalarType dtype,
                       const at::Tensor& ref, const char* arg) {
  check_dim(t, 2, kOp, arg);
  check_size(t, 0, batch, kOp, arg, "batch");
  check_size(t, 1, nodes, kOp, arg, "nodes");
  check_dtype(t, dtype, kOp, arg);
  check_same_device(t, ref, kOp, arg, "draft_tokens");
  check_contiguous(t, kOp, arg);
}

// Turns the status of the first invalid request into an exception naming the argument.
void raise_status(const verify::VerifyParams& p, const at::Tensor& status,
                  const at::Tensor& status_node, bool full_rows) {
  const int32_t* st = status.data_ptr<int32_t>();
  const int64_t* nd = status_node.data_ptr<int64_t>();
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t i = nd[b];
    switch (st[b]) {
      case verify::kOk: continue;
      case verify::kBadNumNodes:
        DOMINO_CHECK_ARG(false, kOp, "num_nodes", "must be in [1, ", p.nodes, "], got ",
                         p.num_nodes[b], " at request ", b);
      case verify::kBadParent:
        DOMINO_CHECK_ARG(false, kOp, "parents", "must satisfy 0 <= parents[b, i] < i for nodes ",
                         "1..num_nodes-1, got parents[", b, ", ", i, "] = ",
                         p.parents[b * p.nodes + i]);
      case verify::kBadToken:
        DOMINO_CHECK_ARG(false, kOp, "draft_tokens", "must hold token ids in [0, ", p.vocab,
                         "), got draft_tokens[", b, ", ", i, "] = ",
                         p.draft_tokens[b * p.nodes + i]);
      case verify::kBadLogits:
        DOMINO_CHECK_ARG(false, kOp, "logits", "row [", b, ", ", i,
                         "] contains NaN or +inf, or every logit is -inf (or the largest scaled ",
                         "logit overflows at this temperature)");
      case verify::kBadDraftProb:
        DOMINO_CHECK_ARG(false, kOp, full_rows ? "draft_probs" : "draft_token_probs",
                         "must give every drafted token a positive finite probability under its ",
                         "parent's draft distribution, got a value <= 0 or non-finite for node ",
                         i, " of request ", b);
      default:
        DOMINO_CHECK_ARG(false, kOp, "temperature/top_k/top_p", "invalid at request ", b);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify(
    const at::Tensor& draft_tokens, const at::Tensor& parents, const at::Tensor& num_nodes,
    const at::Tensor& logits, const at::Tensor& temperature, const std::optional<at::Tensor>& top_k,
    const std::optional<at::Tensor>& top_p, const std::optional<at::Tensor>& draft_probs,
    const std::optional<at::Tensor>& draft_token_probs, const at::Tensor& seed,
    const at::Tensor& offset, int64_t rule) {
  check_device_supported(draft_tokens, kOp, "draft_tokens");
  check_dim(draft_tokens, 2, kOp, "draft_tokens");
  const int64_t batch = draft_tokens.size(0), nodes = draft_tokens.size(1);
  DOMINO_CHECK_ARG(nodes >= 1, kOp, "draft_tokens",
                   "must have at least one node (the root) per request, got shape ",
                   shape_str(draft_tokens));
  DOMINO_CHECK_ARG(nodes <= verify::kMaxNodes, kOp, "draft_tokens", "must have at most ",
                   verify::kMaxNodes, " nodes per request, got shape ", shape_str(draft_tokens));
  check_node_matrix(draft_tokens, batch, nodes, at::kLong, draft_tokens, "draft_tokens");
  check_node_matrix(parents, batch, nodes, at::kLong, draft_tokens, "parents");
  check_vector(num_nodes, batch, at::kLong, draft_tokens, kOp, "num_nodes", "draft_tokens");

  check_dim(logits, 3, kOp, "logits");
  check_size(logits, 0, batch, kOp, "logits", "batch");
  check_size(logits, 1, nodes, kOp, "logits", "nodes");
  check_same_device(logits, draft_tokens, kOp, "logits", "draft_tokens");
  const DType dtype = float_dtype(logits, kOp, "logits");
  const int64_t vocab = logits.size(2);
  DOMINO_CHECK_ARG(vocab > 0, kOp, "logits",
                   "must have a non-empty vocabulary dimension, got shape ", shape_str(logits));
  DOMINO_CHECK_ARG(vocab <= sampling::kMaxVocab, kOp, "logits",
                   "vocabulary must be <= 2^23 (exact fixed-point mass sums), got ", vocab);
  DOMINO_CHECK_ARG(logits.stride(2) == 1, kOp, "logits",
                   "must have unit stride in the vocabulary dimension");

  check_vector(temperature, batch, at::kFloat, draft_tokens, kOp, "temperature", "draft_tokens");
  if (top_k) check_vector(*top_k, batch, at::kLong, draft_tokens, kOp, "top_k", "draft_tokens");
  if (top_p) check_vector(*top_p, batch, at::kFloat, draft_tokens, kOp, "top_p", "draft_tokens");
  check_vector(seed, batch, at::kLong, draft_tokens, kOp, "seed", "draft_tokens");
  check_vector(offset, batch, at::kLong, draft_tokens, kOp, "offset", "draft_tokens");

  DOMINO_CHECK_ARG(rule >= 0 && rule <= 3, kOp, "rule",
                   "must be 0 (greedy), 1 (target_only), 2 (rejection) or 3 "
                   "(rejection_without_replacement), got ", rule);
  const bool needs_q = rule >= verify::kRejection;
  if (needs_q) {
    DOMINO_CHECK_ARG(draft_probs.has_value() != draft_token_probs.has_value(), kOp,
                     "draft_probs", "or 'draft_token_probs' (exactly one) must be given for the "
                     "rejection rules (2, 3)");
  }
  if (draft_probs) {
    const at::Tensor& q = *draft_probs;
    check_dim(q, 3, kOp, "draft_probs");
    check_size(q, 0, batch, kOp, "draft_probs", "batch");
    check_size(q, 1, nodes, kOp, "draft_probs", "nodes");
    check_size(q, 2, vocab, kOp, "draft_probs", "vocab");
    check_dtype(q, at::kFloat, kOp, "draft_probs");
    check_same_device(q, draft_tokens, kOp, "draft_probs", "draft_tokens");
    check_contiguous(q, kOp, "draft_probs");
  }
  if (draft_token_probs)
    check_node_matrix(*draft_token_probs, batch, nodes, at::kFloat, draft_tokens,
                      "draft_token_probs");

  const auto long_opts = draft_tokens.options().dtype(at::kLong);
  at::Tensor accept_len = at::empty({batch}, long_opts);
  at::Tensor accept_path = at::empty({batch, nodes}, long_opts);
  at::Tensor emitted = at::empty({batch, nodes}, long_opts);
  if (batch == 0) return {accept_len, accept_path, emitted};

  verify::VerifyParams p;
  p.draft_tokens = draft_tokens.data_ptr<int64_t>();
  p.parents = parents.data_ptr<int64_t>();
  p.num_nodes = num_nodes.data_ptr<int64_t>();
  p.logits = logits.data_ptr();
  p.dtype = dtype;
  p.logits_stride_b = logits.stride(0);
  p.logits_stride_t = logits.stride(1);
  p.batch = batch;
  p.nodes = nodes;
  p.vocab = vocab;
  p.temperature = temperature.data_ptr<float>();
  p.top_k = top_k ? top_k->data_ptr<int64_t>() : nullptr;
  p.top_p = top_p ? top_p->data_ptr<float>() : nullptr;
  // The rules that do not use draft probabilities ignore them.
  p.draft_probs = needs_q && draft_probs ? draft_probs->data_ptr<float>() : nullptr;
  p.draft_token_probs =
      needs_q && draft_token_probs ? draft_token_probs->data_ptr<float>() : nullptr;
  p.seed = seed.data_ptr<int64_t>();
  p.offset = offset.data_ptr<int64_t>();
  p.rule = int32_t(rule);
  p.accept_len = accept_len.data_ptr<int64_t>();
  p.accept_path = accept_path.data_ptr<int64_t>();
  p.emitted = emitted.data_ptr<int64_t>();

  if (draft_tokens.is_cpu()) {
    // Parameters are readable on the host: name them in the message instead of -1 rows.
    for (int64_t b = 0; b < batch; ++b) {
      const float t = p.temperature[b];
      DOMINO_CHECK_ARG(t >= 0.0f, kOp, "temperature", "must be >= 0 (0 means greedy), got ", t,
                       " at request ", b);
      if (p.top_k)
        DOMINO_CHECK_ARG(p.top_k[b] >= 0, kOp, "top_k", "must be >= 0 (0 means off), got ",
                         p.top_k[b], " at request ", b);
      if (p.top_p)
        DOMINO_CHECK_ARG(p.top_p[b] > 0.0f && p.top_p[b] <= 1.0f, kOp, "top_p",
                         "must be in (0, 1], got ", p.top_p[b], " at request ", b);
    }
    at::Tensor status = at::empty({batch}, draft_tokens.options().dtype(at::kInt));
    at::Tensor status_node = at::empty({batch}, long_opts);
    p.status = status.data_ptr<int32_t>();
    p.status_node = status_node.data_ptr<int64_t>();
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      verify::verify_rows_cpu(p, b0, b1);
    });
    raise_status(p, status, status_node, p.draft_probs != nullptr);
    return {accept_len, accept_path, emitted};
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(draft_tokens.device());
  at::Tensor workspace;  // pre-pass scratch (caching allocator: graph-capturable)
  if (batch <= verify::kPrepassMaxBatch) {
    workspace = at::empty({verify::kWorkspaceWords * batch * nodes}, long_opts);
    p.workspace = reinterpret_cast<uint64_t*>(workspace.data_ptr<int64_t>());
  }
  check_cuda_status(verify::verify_cuda(p, current_stream(draft_tokens)), kOp);
#endif
  return {accept_len, accept_path, emitted};
}

}  // namespace

DOMINO_IMPL_ALL_KEYS(m.impl("verify", &verify);)

}  // namespace binding
}  // namespace domino
