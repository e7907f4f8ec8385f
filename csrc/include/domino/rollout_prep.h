// domino/rollout_prep.h: the two inputs the rollout can be given precomputed, built from the model
// and the step's base logits: the GRU input table and the per-request candidate shortlist.
//
// GRU input table (optional input `gru_table` of domino_rollout / domino_tree_rollout):
//   table[v, r] = sum_h embedding[v, h] * w_ih[r, h] for v < V, r < 3G, accumulated in fp32 and
//   rounded once (round to nearest even) to the weight dtype. The CPU builds it with the rollout
//   engine's own dot-product kernels (the ones that compute W_ih e when no table is given); the
//   CUDA kernel sums h in order with unfused fp32 operations. Summation orders differ between
//   devices and from a BLAS GEMM: an fp32 table agrees with them to a few fp32 ulps of
//   sum_h |e_h w_h|, a bf16 / fp16 table up to one rounding step where that sum sits on a
//   rounding boundary. Such a flip can change a draft token at a near tie, never the output.
//
// Candidate shortlist (RolloutParams::shortlist, chain rollout only):
//   best[b, v] = max over proposals i in [P, N) of base[b, i, v] (read in fp32, a NaN anywhere
//   makes best NaN); shortlist[b, :] = the first K ids of the order NaN first, then larger best,
//   then lower id (-0 == +0): exactly a stable descending sort of best, cut at K.
#pragma once

#include <cstddef>

#include "domino/common.h"

namespace domino {
namespace rollout {

struct GruTableParams {
  const void* embedding = nullptr;  // [V, H], contiguous, weight dtype
  const void* w_ih = nullptr;       // [3G, H], contiguous, weight dtype
  DType dtype = DType::F32;
  int64_t V = 0, H = 0, G3 = 0;
  void* table = nullptr;            // [V, 3G], contiguous, weight dtype (output)
};

struct ShortlistParams {
  const void* base = nullptr;  // base logits [B, >= N, V]
  DType base_dtype = DType::F32;
  int64_t base_stride_b = 0, base_stride_n = 0;  // elements; unit stride over V
  int64_t B = 0, V = 0;
  int32_t first = 0;  // P: the first corrected proposal (0-based row of base)
  int32_t end = 0;    // N: one past the last proposal; first < end
  int32_t K = 0;      // ids kept per request, 0 < K < V
  int32_t* out = nullptr;  // [B, K] (output)
};

// The shortlist's order of (value, id): is a ahead of b? NaN first, then the larger value (with
// -0 == +0), then the lower id.
DOMINO_HD bool shortlist_ahead(float va, int64_t ia, float vb, int64_t ib) {
  const bool na = (float_to_bits(va) & 0x7fffffffu) > 0x7f800000u;
  const bool nb = (float_to_bits(vb) & 0x7fffffffu) > 0x7f800000u;
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

// CPU: table rows [v_begin, v_end); CPU: shortlists of requests [b_begin, b_end). Both are
// thread-safe for disjoint ranges.
void build_gru_table_cpu(const GruTableParams& p, int64_t v_begin, int64_t v_end);
void shortlist_cpu(const ShortlistParams& p, int64_t b_begin, int64_t b_end);

#if defined(DOMINO_WITH_CUDA) || defined(__CUDACC__)
// CUDA: one launch sequence on `stream`; returns cudaSuccess or the first launch error.
int build_gru_table_cuda(const GruTableParams& p, void* stream);
// The shortlist needs a device workspace of this many bytes (a stable segmented radix sort).
size_t shortlist_cuda_workspace_bytes(int64_t B, int64_t V);
int shortlist_cuda(const ShortlistParams& p, void* workspace, size_t workspace_bytes, void* stream);
#endif

}  // namespace rollout
}  // namespace domino
