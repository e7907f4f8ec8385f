// CPU implementation of the rollout's precomputed inputs (domino/rollout_prep.h).
//
// The GRU input table runs the rollout engine's dot-product kernels (rollout_dot.h) with the
// W_ih rows as the weight-stationary operand and a chunk of embedding rows as the activations,
// exactly as the engine computes W_ih e for one token when it is given no table.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "domino/rollout_prep.h"
#include "rollout_dot.h"

namespace domino {
namespace rollout {
namespace {

constexpr int64_t kTableRowsPerPass = 64;  // embedding rows that share one pass over W_ih

const void* row_ptr(const void* base, DType dtype, int64_t row, int64_t ld) {
  const int64_t size = dtype == DType::F32 ? 4 : 2;
  return static_cast<const char*>(base) + row * ld * size;
}

}  // namespace

void build_gru_table_cpu(const GruTableParams& p, int64_t v_begin, int64_t v_end) {
  const int64_t H = p.H, G3 = p.G3, Hp = cpu::pad16(H);
  std::vector<float> X, Y, wbuf;
  for (int64_t v0 = v_begin; v0 < v_end; v0 += kTableRowsPerPass) {
    const int64_t A = std::min(kTableRowsPerPass, v_end - v0);
    X.assign(size_t(A * Hp), 0.0f);
    Y.assign(size_t(A * G3), 0.0f);
    for (int64_t a = 0; a < A; ++a)
      cpu::to_f32_row(row_ptr(p.embedding, p.dtype, v0 + a, H), p.dtype, H, Hp, &X[a * Hp]);
    if (cpu::scores_in_registers()) {
      const cpu::PackedRows Xp = cpu::pack_rows(X.data(), Hp, A, H, p.dtype);
      cpu::score_rows(p.w_ih, p.dtype, H, G3, H, Xp, A, Y.data(), G3, false);
    } else {
      wbuf.assign(size_t(cpu::kRowBlock * Hp), 0.0f);
      for (int64_t r0 = 0; r0 < G3; r0 += cpu::kRowBlock) {
        const int nr = int(std::min<int64_t>(cpu::kRowBlock, G3 - r0));
        for (int j = 0; j < nr; ++j)
          cpu::to_f32_row(row_ptr(p.w_ih, p.dtype, r0 + j, H), p.dtype, H, Hp, &wbuf[j * Hp]);
        cpu::dot_block(wbuf.data(), nr, Hp, X.data(), Hp, A, Y.data() + r0, G3);
      }
    }
    dispatch_dtype(p.dtype, [&](auto tag) {
      using T = decltype(tag);
      T* out = static_cast<T*>(p.table) + v0 * G3;
      for (int64_t i = 0; i < A * G3; ++i) out[i] = from_float<T>(Y[i]);
    });
  }
}

void shortlist_cpu(const ShortlistParams& p, int64_t b_begin, int64_t b_end) {
  const int64_t V = p.V;
  std::vector<float> best(static_cast<size_t>(V));
  std::vector<int32_t> ids(static_cast<size_t>(V));
  for (int64_t b = b_begin; b < b_end; ++b) {
    dispatch_dtype(p.base_dtype, [&](auto tag) {
      using T = decltype(tag);
      const T* row0 = static_cast<const T*>(p.base) + b * p.base_stride_b;
      for (int64_t v = 0; v < V; ++v) {
        float m = to_float(row0[p.first * p.base_stride_n + v]);
        for (int32_t i = p.first + 1; i < p.end && !std::isnan(m); ++i) {
          const float x = to_float(row0[i * p.base_stride_n + v]);
          if (std::isnan(x) || x > m) m = x;
        }
        best[size_t(v)] = m;
      }
    });
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + p.K, ids.end(), [&](int32_t a, int32_t c) {
      return shortlist_ahead(best[size_t(a)], a, best[size_t(c)], c);
    });
    std::copy(ids.begin(), ids.begin() + p.K, p.out + b * p.K);
  }
}

}  // namespace rollout
}  // namespace domino
