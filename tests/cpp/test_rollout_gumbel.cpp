// The sampled rollout's tile math (rollout_gumbel.h) against the scalar domino::det / domino::rng
// code it replaces, bit for bit. The CPU rollout keeps matching the CUDA kernel and the reference
// draw for draw only if these are identical.
//   * Gumbel noise: exhaustively, for all 2^23 uniforms rng::u32_to_uniform can produce. That
//     covers every input the two branch-free logs ever see (the inner log's inputs are exactly
//     these uniforms, the outer log's exactly their -log(u)), so it is a proof for the rollout.
//     It also checks the bound the rollout's pruning relies on: no key exceeds its score by
//     kGumbelMaxNoise.
//   * q rows (exp / div): every 97th float x in [-88, -0] with max 0, sum 1 (all of them, ~1.1e9,
//     with DOMINO_TEST_EXHAUSTIVE=1: the arguments q - max the rollout passes, down to where
//     det::exp returns 0), plus random rows with -inf entries under random (max, sum).
//   * keys: random tiles (lengths with tails and several chunks, -inf scores, consecutive ids from
//     any start, arbitrary ids), random seeds, offsets and streams.
// With DOMINO_DISABLE_AVX512=1 the functions run the scalar code itself (the checks still pass).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/cpu/rollout_gumbel.h"
#include "check.h"
#include "domino/numerics.h"
#include "domino/philox.h"
#include "domino/rollout.h"

using namespace domino;

static uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
static float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

static void check_noise_all_uniforms() {
  const int64_t n = int64_t(1) << 23;
  std::vector<float> u(n), noise(n);
  for (int64_t i = 0; i < n; ++i) u[i] = rng::u32_to_uniform(uint32_t(i) << 9);
  rollout::cpu::gumbel_noise(u.data(), n, noise.data());
  int64_t bad = 0;
  float lowest = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float want = det::log(det::sub(0.0f, det::log(u[i])));
    if (bits(noise[i]) != bits(want) && bad++ < 5)
      std::fprintf(stderr, "noise u=%a got %a want %a\n", u[i], noise[i], want);
    lowest = std::fmin(lowest, want);
  }
  CHECK(bad == 0);
  // key = score - noise <= score + kGumbelMaxNoise (the rollout skips tiles below that bound)
  CHECK(-lowest < rollout::kGumbelMaxNoise);
}

static void check_softmax_row() {
  // floats in [-88, -0] (det::exp is 0 below -87.33), in blocks; every one when exhaustive
  const char* env = std::getenv("DOMINO_TEST_EXHAUSTIVE");
  const uint64_t stride = env && env[0] == '1' ? 1 : 97;
  const uint64_t first = 0x80000000u, last = bits(-88.0f);
  const int64_t block = int64_t(1) << 20;
  std::vector<float> x(block), q(block);
  int64_t bad = 0;
  for (uint64_t b0 = first; b0 <= last; b0 += block * stride) {
    int64_t n = 0;
    for (uint64_t u = b0; u <= last && n < block; u += stride) x[n++] = from_bits(uint32_t(u));
    std::copy(x.begin(), x.begin() + n, q.begin());
    rollout::cpu::softmax_row(q.data(), n, 0.0f, 1.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float want = det::div(det::exp(det::sub(x[j], 0.0f)), 1.0f);
      if (bits(q[j]) != bits(want) && bad++ < 5)
        std::fprintf(stderr, "exp x=%a got %a want %a\n", x[j], q[j], want);
    }
  }
  CHECK(bad == 0);
  // random rows under random (max, sum), with -inf entries and tails
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 6.0f);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t n = 1 + rng() % 700;
    std::vector<float> row(n);
    float mx = -det::kInf;
    for (auto& x : row) {
      x = rng() % 13 == 0 ? -det::kInf : nd(rng);
      mx = std::fmax(mx, x);
    }
    if (!(mx > -det::kInf)) continue;
    const float sum = 1.0f + float(rng() % 1000) * 0.37f;
    std::vector<float> got(row);
    rollout::cpu::softmax_row(got.data(), n, mx, sum);
    for (int64_t j = 0; j < n; ++j) CHECK(bits(got[j]) == bits(det::div(det::exp(det::sub(row[j], mx)), sum)));
  }
}

static void check_keys() {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t n = trial % 3 == 0 ? 256 : 1 + int64_t(rng() % 1100);  // 256: the rollout's tile
    const uint64_t seed = rng(), offset = trial % 5 == 0 ? 0 : rng() >> (rng() % 64);
    const uint32_t stream = uint32_t(rng());
    const uint32_t v0 = trial % 7 == 0 ? 0xffffffffu - uint32_t(rng() % 600) : uint32_t(rng() % 200000);
    const bool with_ids = trial % 2 == 1;
    std::vector<float> s(n), keys(n);
    std::vector<int32_t> ids(n);
    for (int64_t j = 0; j < n; ++j) {
      s[j] = rng() % 9 == 0 ? -det::kInf : nd(rng) * (trial % 4 == 0 ? 100.0f : 1.0f);
      ids[j] = int32_t(rng() % 151936);
    }
    rollout::cpu::gumbel_keys(s.data(), n, v0, with_ids ? ids.data() : nullptr, seed, offset, stream, keys.data());
    int64_t bad = 0;
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t v = with_ids ? uint32_t(ids[j]) : v0 + uint32_t(j);
      const float want = det::gumbel_key(s[j], rng::uniform(seed, offset, stream, v));
      if (bits(keys[j]) != bits(want) && bad++ < 3)
        std::fprintf(stderr, "key trial %d j=%lld got %a want %a\n", trial, (long long)j, keys[j], want);
    }
    CHECK(bad == 0);
  }
}

int main() {
  check_noise_all_uniforms();
  check_softmax_row();
  check_keys();
  TEST_MAIN_END();
}
