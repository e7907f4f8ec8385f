// domino/philox.h: the package's one RNG contract, shared by every op and every device.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), keyed by a
// per-request 64-bit seed. The 128-bit counter is (element block, stream, offset_lo, offset_hi):
//   - offset: a per-request 64-bit value the caller advances between calls (like torch's Philox
//     offset), so repeated calls with one seed draw fresh numbers;
//   - stream: (purpose << 24) | position, so different uses inside one call (the sample op, the
//     acceptance coins of node i, the residual draw, draft step k, ...) never share numbers;
//   - element block: index / 4; one Philox call yields the uniforms of 4 consecutive indices.
// Seeds and offsets live in device tensors, so no op syncs with the host, and the value drawn for
// (seed, offset, stream, index) does not depend on the launch geometry or on the device.
#pragma once

#include "domino/common.h"

namespace domino {
namespace rng {

// Purposes (the top 8 bits of the stream word). Append only: changing one changes the tokens.
enum Purpose : uint32_t {
  kSample = 1,           // domino::sample
  kVerifyCoin = 2,       // verification: acceptance coins / target samples, position = node
  kVerifyResidual = 3,   // verification: residual / bonus draw, position = node
  kDraftChain = 4,       // rollout: Gumbel noise of chain step k
  kDraftTree = 5,        // rollout: Gumbel noise of tree node
};

DOMINO_HD uint32_t stream_id(uint32_t purpose, uint32_t position) {
  return (purpose << 24) | (position & 0x00ffffffu);
}

struct U4 { uint32_t x, y, z, w; };

DOMINO_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
#endif
}

DOMINO_HD U4 philox4x32_10(U4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
DOMINO_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(M0, ctr.x, hi0, lo0);
    mulhilo(M1, ctr.z, hi1, lo1);
    ctr = U4{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// Uniform in the open interval (0, 1), exactly representable: (u >> 9) * 2^-23 + 2^-24, so the
// values are the 2^23 midpoints of [0, 1) on a 2^-23 grid, in [2^-24, 1 - 2^-24].
DOMINO_HD float u32_to_uniform(uint32_t u) {
  return float(u >> 9) * 1.1920928955078125e-07f + 5.9604644775390625e-08f;
}

// The 4 raw words for elements [4*block, 4*block+4) of (seed, offset, stream).
DOMINO_HD U4 raw4(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t block) {
  return philox4x32_10(U4{block, stream, uint32_t(offset), uint32_t(offset >> 32)},
                       uint32_t(seed), uint32_t(seed >> 32));
}

DOMINO_HD uint32_t lane(const U4& r, uint32_t i) {
  return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w;
}

// One uniform for element `index` of (seed, offset, stream). Loops over many consecutive indices
// should call raw4 once per 4 elements instead.
DOMINO_HD float uniform(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t index) {
  return u32_to_uniform(lane(raw4(seed, offset, stream, index >> 2), index & 3u));
}

// 64 random bits of (seed, offset, stream): lanes 0 (high word) and 1 (low word) of block 0.
DOMINO_HD uint64_t random_u64(uint64_t seed, uint64_t offset, uint32_t stream) {
  const U4 r = raw4(seed, offset, stream, 0);
  return (uint64_t(r.x) << 32) | r.y;
}

// High 64 bits of the 128-bit product a * b.
DOMINO_HD uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// Uniform integer in [0, total) (total > 0) from 64 random bits: multiply-high; each value's
// probability is within 2^-64 of 1/total, far below anything observable.
DOMINO_HD uint64_t uniform_below(uint64_t bits, uint64_t total) { return mulhi64(bits, total); }

}  // namespace rng
}  // namespace domino
