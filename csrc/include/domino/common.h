// domino/common.h: the few things every kernel family shares.
//
// Framework-free: no torch headers. Kernels take plain structs of pointers, sizes and strides
// (one header per family) and a cudaStream_t on the GPU side. Everything marked DOMINO_HD is
// compiled for both the CPU implementation and the CUDA kernels, so the CPU tests exercise the
// exact logic the GPU runs.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DOMINO_HD __host__ __device__ __forceinline__
#define DOMINO_DEVICE __device__ __forceinline__
#define DOMINO_UNROLL _Pragma("unroll")
#else
#define DOMINO_HD inline
#define DOMINO_DEVICE inline
#define DOMINO_UNROLL
#endif

namespace domino {

// Element type of a floating-point input (logits, weights, activations). Accumulation is fp32.
enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };

// Storage-only 16-bit float types: the core never does arithmetic on them, it converts to fp32.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

DOMINO_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

DOMINO_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

DOMINO_HD float to_float(float x) { return x; }
DOMINO_HD float to_float(bf16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }

// IEEE half -> float, exact, bit manipulation only (same result on host and device).
DOMINO_HD float to_float(f16_t x) {
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);  // +-0
    // subnormal half: normalise into a normal float
    int e = -1;
    do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_to_float(sign | uint32_t(127 - 15 - e) << 23 | (mant << 13));
  }
  return bits_to_float(sign | (exp + (127 - 15)) << 23 | (mant << 13));
}

// Round-to-nearest-even float -> bf16 / f16 (for outputs written in the input dtype).
DOMINO_HD bf16_t to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

DOMINO_HD f16_t to_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return f16_t{uint16_t(sign | 0x7e00u)};
  if (absu >= 0x477ff000u) return f16_t{uint16_t(sign | 0x7c00u)};  // rounds to inf
  if (absu < 0x38800000u) {                                          // subnormal or zero half
    if (absu < 0x33000000u) return f16_t{uint16_t(sign)};
    const uint32_t e = absu >> 23;
    const uint32_t m = (absu & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // value / 2^-24 == m >> (126 - e); shift is 14..24
    const uint32_t half_ulp = 1u << (shift - 1);
    const uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t r = m >> shift;  // round to nearest even on the dropped bits
    if (rem > half_ulp || (rem == half_ulp && (r & 1u))) ++r;
    return f16_t{uint16_t(sign | r)};
  }
  uint32_t v = absu - 0x38000000u;  // rebias 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);
  return f16_t{uint16_t(sign | (v >> 13))};
}

template <typename T> DOMINO_HD T from_float(float f);
template <> DOMINO_HD float from_float<float>(float f) { return f; }
template <> DOMINO_HD bf16_t from_float<bf16_t>(float f) { return to_bf16(f); }
template <> DOMINO_HD f16_t from_float<f16_t>(float f) { return to_f16(f); }

// Status codes returned by host launchers (the binding layer turns them into exceptions).
enum class Status : int32_t { Ok = 0, InvalidArgument = 1, CudaError = 2, Unsupported = 3 };

// Calls f.template operator()<T>() with T the storage type of `dtype`.
template <typename F>
inline Status dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(float{}); return Status::Ok;
    case DType::BF16: f(bf16_t{}); return Status::Ok;
    case DType::F16: f(f16_t{}); return Status::Ok;
  }
  return Status::Unsupported;
}

}  // namespace domino
