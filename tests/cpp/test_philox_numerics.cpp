// Known-answer tests for the RNG contract and the deterministic float helpers.
#include <cmath>
#include <cstdint>

#include "check.h"
#include "domino/common.h"
#include "domino/numerics.h"
#include "domino/philox.h"

using namespace domino;

static bool eq(rng::U4 a, uint32_t x, uint32_t y, uint32_t z, uint32_t w) {
  return a.x == x && a.y == y && a.z == z && a.w == w;
}

int main() {
  // Random123 kat_vectors for philox4x32-10.
  CHECK(eq(rng::philox4x32_10({0, 0, 0, 0}, 0, 0), 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u));
  CHECK(eq(rng::philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffu, 0xffffffffu),
           0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu));
  CHECK(eq(rng::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, 0xa4093822u, 0x299f31d0u),
           0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u));

  // Uniforms are strictly inside (0, 1).
  CHECK(rng::u32_to_uniform(0u) > 0.0f);
  CHECK(rng::u32_to_uniform(0xffffffffu) < 1.0f);

  // det::log / det::exp accuracy against libm (determinism is tested in Python vs NumPy).
  double worst_log = 0, worst_exp = 0;
  for (int i = 1; i < 200000; ++i) {
    const float x = float(i) * 1.0e-4f;
    worst_log = std::fmax(worst_log, std::fabs(double(det::log(x)) - std::log(double(x))));
    const float y = -float(i) * 4.0e-4f;
    const double ref = std::exp(double(y));
    if (ref > 1e-30) worst_exp = std::fmax(worst_exp, std::fabs(double(det::exp(y)) / ref - 1.0));
  }
  CHECK(worst_log < 1e-6);
  CHECK(worst_exp < 1e-6);
  CHECK(std::isinf(det::log(0.0f)) && det::log(0.0f) < 0);
  CHECK(det::exp(-100.0f) == 0.0f);
  CHECK(det::exp(0.0f) == 1.0f);

  // Ordered keys preserve order, including negatives and infinities.
  const float xs[] = {-det::kInf, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, det::kInf};
  for (int i = 0; i + 1 < 8; ++i) CHECK(det::ordered_key(xs[i]) < det::ordered_key(xs[i + 1]));
  for (float x : xs) CHECK(det::key_to_float(det::ordered_key(x)) == x);

  // 16-bit conversions round-trip.
  CHECK(to_float(bf16_t{0x3f80}) == 1.0f);
  CHECK(to_float(f16_t{0x3c00}) == 1.0f);
  CHECK(to_float(f16_t{0x0001}) == std::ldexp(1.0f, -24));
  CHECK(to_float(f16_t{0xfbff}) == -65504.0f);
  for (uint32_t h = 0; h < 0x7c00u; ++h) CHECK(to_f16(to_float(f16_t{uint16_t(h)})).bits == h);
  CHECK(to_bf16(1.00390625f).bits == 0x3f80);  // tie rounds to even
  TEST_MAIN_END();
}
