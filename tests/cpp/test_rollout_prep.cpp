// The rollout's precomputed inputs without torch (domino/rollout_prep.h): the GRU input table
// against a double-precision GEMM (fp32 within a few ulps of sum |e w|; bf16 within one rounding
// step), and the shortlist against a stable descending sort with NaN, signed zeros, ties, -inf
// and bf16 logits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "domino/rollout_prep.h"

using namespace domino;

static void check_table(DType dtype, int64_t V, int64_t H, int64_t G3, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> e(size_t(V * H)), w(size_t(G3 * H));
  for (auto& x : e) x = to_float(to_bf16(nd(rng)));
  for (auto& x : w) x = to_float(to_bf16(nd(rng) * 0.1f));
  std::vector<bf16_t> e16(e.size()), w16(w.size()), t16(size_t(V * G3));
  for (size_t i = 0; i < e.size(); ++i) e16[i] = to_bf16(e[i]);
  for (size_t i = 0; i < w.size(); ++i) w16[i] = to_bf16(w[i]);
  std::vector<float> t32(size_t(V * G3));
  rollout::GruTableParams p;
  p.dtype = dtype;
  p.embedding = dtype == DType::F32 ? static_cast<const void*>(e.data()) : e16.data();
  p.w_ih = dtype == DType::F32 ? static_cast<const void*>(w.data()) : w16.data();
  p.table = dtype == DType::F32 ? static_cast<void*>(t32.data()) : t16.data();
  p.V = V;
  p.H = H;
  p.G3 = G3;
  rollout::build_gru_table_cpu(p, 0, V / 2);  // two disjoint ranges, as threads would split it
  rollout::build_gru_table_cpu(p, V / 2, V);
  int bad = 0;
  for (int64_t v = 0; v < V; ++v)
    for (int64_t r = 0; r < G3; ++r) {
      double exact = 0, mag = 0;
      for (int64_t h = 0; h < H; ++h) {
        exact += double(e[v * H + h]) * w[r * H + h];
        mag += std::fabs(double(e[v * H + h]) * w[r * H + h]);
      }
      const float got = dtype == DType::F32 ? t32[v * G3 + r] : to_float(t16[v * G3 + r]);
      // fp32: summation-order error <= H * 2^-24 * sum |e w|; bf16: plus one rounding (2^-8).
      const double tol = (dtype == DType::F32 ? 0.0 : std::fabs(exact) * 0x1p-8) +
                         double(H) * 0x1p-24 * mag + 1e-30;
      if (!(std::fabs(got - exact) <= tol)) ++bad;
    }
  CHECK(bad == 0);
}

static std::vector<int32_t> sorted_reference(const std::vector<float>& best, int K) {
  std::vector<int32_t> ids(best.size());
  std::iota(ids.begin(), ids.end(), 0);
  // torch.sort(stable=True, descending=True): NaN first, equal values (-0 == +0) keep id order.
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    const float x = best[size_t(a)], y = best[size_t(b)];
    if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && !std::isnan(y);
    return x > y;
  });
  ids.resize(size_t(K));
  return ids;
}

static void check_shortlist(bool bf16, uint32_t seed) {
  const int64_t B = 3, N = 5, V = 301;
  const int32_t P = 1;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> level(-6, 6);  // few distinct values: many ties
  std::vector<float> base(size_t(B * N * V));
  for (auto& x : base) x = float(level(rng)) * 0.5f;
  base[size_t(0 * N * V + 2 * V + 7)] = std::numeric_limits<float>::quiet_NaN();  // row 0, NaN
  base[size_t(0 * N * V + 1 * V + 9)] = std::numeric_limits<float>::quiet_NaN();
  for (int64_t n = 0; n < N; ++n) {  // row 1: signed zeros and -inf as the only values of some ids
    base[size_t(1 * N * V + n * V + 3)] = n % 2 ? -0.0f : 0.0f;
    base[size_t(1 * N * V + n * V + 4)] = 0.0f;
    base[size_t(1 * N * V + n * V + 5)] = -std::numeric_limits<float>::infinity();
  }
  std::vector<bf16_t> base16(base.size());
  for (size_t i = 0; i < base.size(); ++i) base16[i] = to_bf16(base[i]);
  for (int K : {1, 17, 200, 300}) {
    std::vector<int32_t> out(size_t(B * K), -1);
    rollout::ShortlistParams p;
    p.base = bf16 ? static_cast<const void*>(base16.data()) : base.data();
    p.base_dtype = bf16 ? DType::BF16 : DType::F32;
    p.base_stride_b = N * V;
    p.base_stride_n = V;
    p.B = B;
    p.V = V;
    p.first = P;
    p.end = int32_t(N);
    p.K = K;
    p.out = out.data();
    rollout::shortlist_cpu(p, 0, B);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> best(static_cast<size_t>(V));
      for (int64_t v = 0; v < V; ++v) {
        float m = -std::numeric_limits<float>::infinity();
        bool nan = false;
        for (int64_t n = P; n < N; ++n) {
          const float x = base[size_t(b * N * V + n * V + v)];
          nan |= std::isnan(x);
          m = std::max(m, x);
        }
        best[size_t(v)] = nan ? std::numeric_limits<float>::quiet_NaN() : m;
      }
      const std::vector<int32_t> want = sorted_reference(best, K);
      CHECK(std::equal(want.begin(), want.end(), out.begin() + b * K));
    }
  }
}

int main() {
  check_table(DType::F32, 37, 40, 9, 1);
  check_table(DType::F32, 130, 256, 96, 2);
  check_table(DType::BF16, 70, 64, 48, 3);
  check_shortlist(false, 4);
  check_shortlist(true, 5);
  TEST_MAIN_END();
}
