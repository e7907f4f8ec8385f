// rollout_dot.h (CPU-private): weight-stationary multi-vector GEMV, the inner loop of the rollout,
// and the tile epilogue helpers.
//
// Every kernel computes out[a * ldo + j] = dot(W[row_j, 0:K], X[a, 0:K]) for all A activation rows
// while reading each weight row from memory once: that is what makes the per-step cost one pass
// over embed_proj.2 for the whole batch. Kernels, fastest first (runtime CPU checks):
//   score_groups_packed    bf16, packed W2 (pack_w2_bf16), vdpbf16ps, no horizontal sums
//   score_rows             bf16 rows with vdpbf16ps (AVX512_BF16), or bf16 / fp16 / fp32 rows
//                          converted in registers, AVX-512 FMA
//   dot_block              rows already converted to fp32 (portable fallback)
// All accumulate in fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "domino/common.h"

namespace domino {
namespace rollout {
namespace cpu {

constexpr int64_t kRowBlock = 4;
inline int64_t pad16(int64_t k) { return (k + 15) / 16 * 16; }

bool have_avx512();

// fp32 copy of a weight / activation row, zero-padded to Kp.
void to_f32_row(const void* src, DType dtype, int64_t K, int64_t Kp, float* dst);

// `w` holds kRowBlock rows converted to fp32 and zero-padded to Kp = pad16(K) (rows >= nrows are
// ignored); X: A rows of Kp floats (stride ldx).
void dot_block(const float* w, int nrows, int64_t Kp, const float* X, int64_t ldx, int64_t A,
               float* out, int64_t ldo);

// ---- the in-register kernels (AVX-512; scores_in_registers() says whether they are available) ----
// out[a * ldo + j] = dot(W[j, 0:K], X[a]) for rows j < nrows of W (row stride ldw elements), every
// weight row read once for all A rows, accumulation in fp32. The kernel is picked here, from the
// CPU and the weight dtype:
//   * bf16 weights on a CPU with AVX512_BF16 (bf16_pairs()): vdpbf16ps on bf16 x bf16 pairs. The
//     activations are bf16 values (to_weight_precision), so the products are exact and the scores
//     differ from the fp32-FMA kernel only in the (fp32, implementation-defined) summation order,
//     and in vdpbf16ps flushing denormal inputs and partial sums to zero. Twice the FMA rate and no
//     in-register conversion: B = 8 memory-bound instead of FMA-bound.
//   * otherwise: weight rows read in their own dtype and converted in registers, fp32 FMA.
// pack_rows prepares the A activation rows (stride ldx, K values each) once for that kernel:
// zero-padded to pad32(K); bf16 bits for vdpbf16ps; fp32 for the FMA kernel, where for bf16
// weights each 32-wide chunk is stored evens first, then odds, matching the in-register
// bf16 -> fp32 split of one 64-byte load. `stream`: the rows are read once per call (W2): fetch
// them non-temporally, so that they do not evict the small GRU weights, which are read every
// step, from L3.
inline int64_t pad32(int64_t k) { return (k + 31) / 32 * 32; }
bool scores_in_registers();
bool bf16_pairs();
struct PackedRows {
  bool bf16_pairs = false;     // for the vdpbf16ps kernel: `bits`, else `f32`
  int64_t ld = 0;              // pad32(K)
  std::vector<uint16_t> bits;  // A x ld bf16 bits
  std::vector<float> f32;      // A x ld floats
};
PackedRows pack_rows(const float* X, int64_t ldx, int64_t A, int64_t K, DType wdtype);
void score_rows(const void* W, DType wdtype, int64_t ldw, int64_t nrows, int64_t K,
                const PackedRows& X, int64_t A, float* out, int64_t ldo, bool stream);

// Packed W2 (pack_w2_bf16): out[a * ldo + 16 * g + l] = dot(W2 row 16 * g + l, X[a]) for
// ngroups groups starting at P (all 16 lanes are written, rows past V score 0). Needs
// X.bf16_pairs.
void score_groups_packed(const uint32_t* P, int64_t J, int64_t ngroups, const PackedRows& X,
                         int64_t A, float* out, int64_t ldo);

// One pass over a tile of scores: s[j] = base[j] + s[j] (add) or base[j] (!add) when base is
// given (in its own dtype), then s[j] / t when t > 0 (correctly rounded, as domino::det::div),
// NaN -> -inf (a NaN score never wins). Returns the max (-inf when every element is -inf).
float finish_scores(float* s, int64_t n, const void* base, DType base_dtype, bool add, float t);

// sum exp(s[j] - max) for a finite max (the softmax normaliser; vectorised exp, ~2 ulp).
float sum_exp(const float* s, int64_t n, float max);

// The GRU cells of one node: h[k] = to_weight_precision(gru_cell(g[k], g[G + k], g[2G + k],
// gh[k], gh[G + k], gh[2G + k], hp[k]), wdtype) for k < G (gh / hp null: zeros). With AVX-512,
// 16 lanes at a time through the same IEEE operations in the same order as the scalar
// domino::det code (no FMA contraction): bit-identical to it, so CPU and CUDA states stay equal.
void gru_cells(const float* g, const float* gh, const float* hp, int64_t G, DType wdtype, float* h);

// Index of the first element equal to `value` in x[0, n) (n if none).
int64_t find_first(const float* x, int64_t n, float value);

}  // namespace cpu
}  // namespace rollout
}  // namespace domino
