// The CPU rollout's 16-lane GRU cell (rollout_dot.h: gru_cells) against the scalar domino::det
// code it replaces, bit for bit: over random and extreme inputs (overflow / underflow of exp,
// +-inf, NaN, values next to bf16 rounding midpoints), for fp32 and bf16 weights, with and without
// a parent state. The CPU and CUDA states stay equal only if these are identical.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../../csrc/cpu/rollout_dot.h"
#include "check.h"
#include "domino/rollout.h"

using namespace domino;
using namespace domino::rollout;

static uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 3.0f);
  const float specials[] = {0.0f, -0.0f, 88.0f, 89.0f, -87.0f, -88.0f, 1e30f, -1e30f, 44.4f, -44.4f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 1.00390625f /* bf16 midpoint */,
                            1e-40f, -1e-40f};
  const int64_t G = 16 * 37 + 5;  // a scalar tail as well
  for (int trial = 0; trial < 40; ++trial) {
    std::vector<float> g(3 * G), gh(3 * G), hp(G);
    for (auto* v : {&g, &gh, &hp})
      for (auto& x : *v) {
        const unsigned pick = rng() % 10;
        x = pick == 0 ? specials[rng() % (sizeof(specials) / sizeof(float))] : n(rng) * (pick == 1 ? 20.0f : 1.0f);
      }
    for (DType dt : {DType::F32, DType::BF16}) {
      for (int with_parent = 0; with_parent < 2; ++with_parent) {
        const float* ghp = with_parent ? gh.data() : nullptr;
        const float* hpp = with_parent ? hp.data() : nullptr;
        std::vector<float> got(G);
        cpu::gru_cells(g.data(), ghp, hpp, G, dt, got.data());
        for (int64_t k = 0; k < G; ++k) {
          const float want = to_weight_precision(
              gru_cell(g[k], g[G + k], g[2 * G + k], ghp ? gh[k] : 0.0f, ghp ? gh[G + k] : 0.0f,
                       ghp ? gh[2 * G + k] : 0.0f, hpp ? hp[k] : 0.0f), dt);
          const bool same = bits(got[k]) == bits(want) || (std::isnan(got[k]) && std::isnan(want));
          if (!same) std::fprintf(stderr, "k=%lld got %a want %a\n", (long long)k, got[k], want);
          CHECK(same);
        }
      }
    }
  }
  TEST_MAIN_END();
}
