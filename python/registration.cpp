// registration.cpp: the single TORCH_LIBRARY(domino) block. Every op schema lives here: this file
// is the package's contract with torch.ops, torch.compile and the engines that vendor us.
// Implementations register themselves per dispatch key in the <family>_ops.cpp files.
#include <torch/library.h>

TORCH_LIBRARY(domino, m) {
  // Sampling (domino/sampling.h). Returns int64 tokens [B]; -1 marks an invalid row.
  m.def(
      "sample(Tensor logits, Tensor temperature, Tensor? top_k, Tensor? top_p, Tensor? min_p, "
      "Tensor seed, Tensor offset) -> Tensor");

  // Domino draft rollout (domino/rollout.h). Chain: tokens [B, N] int64, q [B, N] fp32, q_rows
  // [B, N, V] fp32 (or [0] when not requested). Tree: tokens, parents [B, budget + 1] int64 (node 0 =
  // anchor, parents[0] = -1, padding -1), q [B, budget + 1] fp32, num_nodes [B] int64, q_rows
  // [B, budget + 1, V] fp32 (row n = the draft distribution of node n's children; or [0]).
  m.def(
      "domino_rollout(Tensor hidden, Tensor base_logits, Tensor anchor, Tensor w_ih, Tensor w_hh, "
      "Tensor w1, Tensor w2, Tensor embedding, Tensor? gru_table, int num_proposals, "
      "bool shift_label, int pure_prefix_len, Tensor? temperature, Tensor? seed, Tensor? offset, "
      "bool return_q_rows, int candidates, Tensor? w2_packed=None) -> (Tensor tokens, Tensor q, Tensor q_rows)");
  m.def(
      "domino_tree_rollout(Tensor hidden, Tensor base_logits, Tensor anchor, Tensor w_ih, "
      "Tensor w_hh, Tensor w1, Tensor w2, Tensor embedding, Tensor? gru_table, bool shift_label, "
      "int pure_prefix_len, int topk, int depth, int budget, Tensor? temperature, Tensor? seed, "
      "Tensor? offset, Tensor? w2_packed=None, bool return_q_rows=False) -> (Tensor tokens, "
      "Tensor parents, Tensor q, Tensor num_nodes, Tensor q_rows)");
  // GRU input table [V, 3G] = embedding @ w_ih^T (fp32 accumulation, weight dtype).
  m.def("build_gru_table(Tensor embedding, Tensor w_ih) -> Tensor");
  // CPU copy of a bf16 W2 [V, E] in the packed layout of rollout.h (pack_w2_bf16): int32
  // [ceil(V/16), ceil(E/2), 16], the optional w2_packed argument of the rollout ops.
  m.def("pack_w2(Tensor w2) -> Tensor");

  // Attention over a paged KV cache (domino/attention.h). mask_mode: 0 causal, 1 tree (packed
  // ancestor bits over the new tokens in tree_mask [total_q, W] int32), 2 full. Returns out
  // [total_q, Hq, D] in q's dtype and lse [total_q, Hq] fp32 (a [0] tensor unless return_lse).
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "Tensor kv_lens, Tensor q_cu_lens, Tensor? tree_mask, int mask_mode, float scale, "
      "bool return_lse) -> (Tensor out, Tensor lse)");
  // Writes k/v [total_q, Hkv, D] of the new tokens at positions kv_lens[b] + i of the paged cache.
  m.def(
      "append_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor block_table, "
      "Tensor kv_lens, Tensor q_cu_lens) -> ()");
  // Parent array [B, T] int64 -> ancestor-or-self mask [B, T, ceil(T/32)] int32, depth [B, T]
  // int32, positions [B, T] int64 (= prefix_len + depth).
  m.def(
      "tree_info(Tensor parents, Tensor num_nodes, Tensor prefix_lens) -> "
      "(Tensor mask, Tensor depth, Tensor positions)");

  // Verification (domino/verify.h): chain and tree, greedy and lossless stochastic rules.
  // rule: 0 greedy, 1 target-only, 2 rejection (children i.i.d.), 3 rejection (children without
  // replacement). Returns accept_len [B], accept_path [B,T], emitted [B,T] (int64, -1 padded).
  m.def(
      "verify(Tensor draft_tokens, Tensor parents, Tensor num_nodes, Tensor logits, "
      "Tensor temperature, Tensor? top_k, Tensor? top_p, Tensor? draft_probs, "
      "Tensor? draft_token_probs, Tensor seed, Tensor offset, int rule) "
      "-> (Tensor accept_len, Tensor accept_path, Tensor emitted)");
}

// A minimal Python module so that `import domino_kernels._C` loads the library (which runs the
// registrations above). No pybind11: ops are reached only through torch.ops.domino.
#include <Python.h>

#include "domino/rollout.h"

#ifndef DOMINO_CUDA_ARCH_LIST
#define DOMINO_CUDA_ARCH_LIST ""
#endif
#ifndef DOMINO_TORCH_VERSION
#define DOMINO_TORCH_VERSION "unknown"
#endif

// The module also says what this very library contains (so a stale or foreign build cannot lie).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef DOMINO_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  PyModule_AddStringConstant(m, "CUDA_ARCH_LIST", DOMINO_CUDA_ARCH_LIST);
  PyModule_AddStringConstant(m, "TORCH_VERSION", DOMINO_TORCH_VERSION);
  // 1 when the rollout's packed-W2 CPU kernel runs here (see domino::pack_w2).
  PyModule_AddIntConstant(m, "CPU_PACKED_W2", domino::rollout::cpu_uses_packed_w2() ? 1 : 0);
  return m;
}
