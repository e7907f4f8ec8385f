// domino/numerics.h: bit-reproducible float helpers shared by the CPU and CUDA kernels.
//
// Why this exists: the package promises that the CPU and the CUDA kernels emit the *same* tokens
// for the same seeds. Library expf/logf differ between glibc and CUDA's libdevice in the last ulp,
// and nvcc contracts a*b+c into FMA while the host compiler may not. Any of that can flip a
// near-tie in a sampling decision. So every float computation that feeds a sampling decision goes
// through the functions below: only correctly rounded IEEE operations (pinned with the _rn
// intrinsics on the device, -ffp-contract=off on the host) and exact bit manipulation.
// Accuracy is ~1-2 ulp, which is far below anything a sampling test can see.
#pragma once

#include <cmath>

#include "domino/common.h"

namespace domino {
namespace det {

#if defined(__CUDA_ARCH__)
DOMINO_HD float add(float a, float b) { return __fadd_rn(a, b); }
DOMINO_HD float sub(float a, float b) { return __fsub_rn(a, b); }
DOMINO_HD float mul(float a, float b) { return __fmul_rn(a, b); }
DOMINO_HD float div(float a, float b) { return __fdiv_rn(a, b); }
#else
DOMINO_HD float add(float a, float b) { return a + b; }
DOMINO_HD float sub(float a, float b) { return a - b; }
DOMINO_HD float mul(float a, float b) { return a * b; }
DOMINO_HD float div(float a, float b) { return a / b; }
#endif

DOMINO_HD bool is_nan(float x) { return (float_to_bits(x) & 0x7fffffffu) > 0x7f800000u; }
DOMINO_HD bool is_finite(float x) { return (float_to_bits(x) & 0x7f800000u) != 0x7f800000u; }

constexpr float kInf = __builtin_huge_valf();

// Natural log for x > 0 (FreeBSD e_logf-style reduction and minimax polynomial).
// x <= 0 -> -inf (x == 0) or NaN (x < 0); +inf -> +inf; NaN -> NaN.
DOMINO_HD float log(float x) {
  uint32_t ix = float_to_bits(x);
  if (is_nan(x)) return x;
  if ((ix & 0x7fffffffu) == 0) return -kInf;
  if (ix >> 31) return bits_to_float(0x7fc00000u);
  if (ix == 0x7f800000u) return x;
  int k = 0;
  if (ix < 0x00800000u) {  // subnormal: scale by 2^25
    k -= 25;
    ix = float_to_bits(mul(x, 33554432.0f));
  }
  k += int(ix >> 23) - 127;
  uint32_t m = ix & 0x007fffffu;
  // Put the mantissa in [sqrt(2)/2, sqrt(2)) so that f = m - 1 is small.
  float mf;
  if (m > 0x3504f3u) {
    mf = bits_to_float(m | 0x3f000000u);  // [0.707, 1)
    k += 1;
  } else {
    mf = bits_to_float(m | 0x3f800000u);  // [1, 1.414)
  }
  const float f = sub(mf, 1.0f);
  const float s = div(f, add(2.0f, f));
  const float z = mul(s, s);
  const float w = mul(z, z);
  const float Lg1 = 0.66666662693f, Lg2 = 0.40000972152f, Lg3 = 0.28498786688f,
              Lg4 = 0.24279078841f;
  const float t1 = mul(w, add(Lg2, mul(w, Lg4)));
  const float t2 = mul(z, add(Lg1, mul(w, Lg3)));
  const float R = add(t2, t1);
  const float hfsq = mul(mul(0.5f, f), f);
  const float dk = float(k);
  const float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
  // k*ln2_hi - ((hfsq - (s*(hfsq+R) + k*ln2_lo)) - f)
  const float inner = add(mul(s, add(hfsq, R)), mul(dk, ln2_lo));
  return sub(mul(dk, ln2_hi), sub(sub(hfsq, inner), f));
}

// exp(x), correct to ~1 ulp on its range; x < -87.3 -> 0, x > 88.7 -> +inf, NaN -> NaN.
DOMINO_HD float exp(float x) {
  if (is_nan(x)) return x;
  if (x > 88.72f) return kInf;
  if (x < -87.33f) return 0.0f;
  // x = k*ln2 + r, |r| <= ln2/2 (Cody-Waite with a two-part ln2)
  const float kf = floorf(add(mul(x, 1.44269504089f), 0.5f));
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  const float r = sub(sub(x, mul(kf, ln2_hi)), mul(kf, ln2_lo));
  // Taylor/Horner to degree 7: error < 2e-8 relative on |r| <= 0.347
  float p = 1.98412698e-4f;              // 1/5040
  p = add(mul(p, r), 1.38888889e-3f);    // 1/720
  p = add(mul(p, r), 8.33333333e-3f);    // 1/120
  p = add(mul(p, r), 4.16666667e-2f);    // 1/24
  p = add(mul(p, r), 1.66666667e-1f);    // 1/6
  p = add(mul(p, r), 0.5f);
  p = add(mul(p, r), 1.0f);
  p = add(mul(p, r), 1.0f);
  const int k = int(kf);
  // scale by 2^k in two steps so that k down to -126-ish stays exact-ish and never overflows
  const int k1 = k / 2, k2 = k - k1;
  const float s1 = bits_to_float(uint32_t(k1 + 127) << 23);
  const float s2 = bits_to_float(uint32_t(k2 + 127) << 23);
  return mul(mul(p, s1), s2);
}

// Order-preserving map float -> uint32 (larger float -> larger key; -0 < +0; NaN is not
// mapped meaningfully and must be filtered by the caller).
DOMINO_HD uint32_t ordered_key(float x) {
  const uint32_t u = float_to_bits(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
DOMINO_HD float key_to_float(uint32_t k) {
  return bits_to_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The argmax order of every selection (greedy picks, top-k lists, Gumbel-max draws): is
// (key_a, idx_a) ahead of (key_b, idx_b)? Larger key first, then the lower index.
DOMINO_HD bool key_better(float key_a, int64_t idx_a, float key_b, int64_t idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

// Gumbel-perturbed key of an element with scaled logit `scaled` and uniform u in (0, 1):
// scaled - log(-log(u)). The argmax over a set of these is an exact sample of softmax over it.
DOMINO_HD float gumbel_key(float scaled, float u) { return sub(scaled, log(sub(0.0f, log(u)))); }

// Fixed-point probability mass: w = trunc(e * 2^40) for e in [0, 1]. Integer sums of these are
// exact and order independent, so thresholds computed from them agree on every device and for
// every reduction order (a float sum would not).
constexpr float kMassScale = 1099511627776.0f;  // 2^40
DOMINO_HD uint64_t fixed_mass(float e) { return (uint64_t)(mul(e, kMassScale)); }

}  // namespace det
}  // namespace domino
