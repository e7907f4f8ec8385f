// The sampled rollout's tile math (see rollout_gumbel.h): AVX-512 with a runtime check, the scalar
// domino::det / domino::rng code otherwise. Both give the same bits (tests/cpp/test_rollout_simd.cpp).
#include "rollout_gumbel.h"

#include <algorithm>

#include "det_avx512.h"
#include "domino/numerics.h"
#include "domino/philox.h"
#include "rollout_dot.h"

namespace domino {
namespace rollout {
namespace cpu {
namespace {

constexpr int64_t kChunk = 256;  // elements whose raw Philox words are buffered at a time

#ifdef DOMINO_X86
// (hi, lo) = the 64-bit products a[l] * M, 16 lanes (rng::mulhilo).
DOMINO_AVX512 inline void mulhilo16(__m512i a, uint32_t M, __m512i& hi, __m512i& lo) {
  const __m512i m = _mm512_set1_epi64(int64_t(M));
  const __m512i even = _mm512_mul_epu32(a, m);                        // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ...
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// rng::raw4 for 16 element blocks at once: r[0..3] lane l = words x, y, z, w of block[l].
DOMINO_AVX512 inline void raw4_x16(__m512i block, uint64_t seed, uint64_t offset, uint32_t stream,
                                   __m512i r[4]) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  __m512i x = block, y = _mm512_set1_epi32(int(stream)), z = _mm512_set1_epi32(int(uint32_t(offset))),
          w = _mm512_set1_epi32(int(uint32_t(offset >> 32)));
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {  // rng::philox4x32_10
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(x, M0, hi0, lo0);
    mulhilo16(z, M1, hi1, lo1);
    x = _mm512_xor_si512(_mm512_xor_si512(hi1, y), _mm512_set1_epi32(int(k0)));
    y = lo1;
    z = _mm512_xor_si512(_mm512_xor_si512(hi0, w), _mm512_set1_epi32(int(k1)));
    w = lo0;
    k0 += W0;
    k1 += W1;
  }
  r[0] = x; r[1] = y; r[2] = z; r[3] = w;
}

// raw[e] = lane e & 3 of rng::raw4(block b0 + e / 4) for e < 4 * nblocks (element order).
DOMINO_AVX512 void raw_words_consecutive(uint32_t b0, int64_t nblocks, uint64_t seed, uint64_t offset,
                                         uint32_t stream, uint32_t* raw) {
  // 4x16 words (x, y, z, w of 16 blocks) -> 64 words in element order, by two rounds of
  // two-source permutes: (x, y) and (z, w) pairs, then the pairs of pairs.
  const __m512i pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i pair_hi = _mm512_add_epi32(pair_lo, _mm512_set1_epi32(8));
  const __m512i quad_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
  const __m512i quad_hi = _mm512_add_epi32(quad_lo, _mm512_set1_epi32(8));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i block_mask = _mm512_set1_epi32(0x3fffffff);  // ids are uint32: blocks wrap at 2^30
  for (int64_t b = 0; b < nblocks; b += 16) {
    __m512i r[4];
    const __m512i block = _mm512_and_si512(_mm512_add_epi32(_mm512_set1_epi32(int(b0 + uint32_t(b))), lane), block_mask);
    raw4_x16(block, seed, offset, stream, r);
    const __m512i xy_lo = _mm512_permutex2var_epi32(r[0], pair_lo, r[1]);
    const __m512i xy_hi = _mm512_permutex2var_epi32(r[0], pair_hi, r[1]);
    const __m512i zw_lo = _mm512_permutex2var_epi32(r[2], pair_lo, r[3]);
    const __m512i zw_hi = _mm512_permutex2var_epi32(r[2], pair_hi, r[3]);
    uint32_t* out = raw + 4 * b;
    _mm512_storeu_si512(out, _mm512_permutex2var_epi32(xy_lo, quad_lo, zw_lo));
    _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi32(xy_lo, quad_hi, zw_lo));
    _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi32(xy_hi, quad_lo, zw_hi));
    _mm512_storeu_si512(out + 48, _mm512_permutex2var_epi32(xy_hi, quad_hi, zw_hi));
  }
}

// raw[j] = lane ids[j] & 3 of rng::raw4(block ids[j] / 4), j < n (arbitrary ids: one counter each).
DOMINO_AVX512 void raw_words_ids(const int32_t* ids, int64_t n, uint64_t seed, uint64_t offset,
                                 uint32_t stream, uint32_t* raw) {
  const __m512i three = _mm512_set1_epi32(3);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1u);
    const __m512i id = _mm512_maskz_loadu_epi32(k, ids + j);
    __m512i r[4];
    raw4_x16(_mm512_srli_epi32(id, 2), seed, offset, stream, r);
    const __m512i l = _mm512_and_si512(id, three);
    __m512i v = r[0];
    v = _mm512_mask_mov_epi32(v, _mm512_cmpeq_epi32_mask(l, _mm512_set1_epi32(1)), r[1]);
    v = _mm512_mask_mov_epi32(v, _mm512_cmpeq_epi32_mask(l, _mm512_set1_epi32(2)), r[2]);
    v = _mm512_mask_mov_epi32(v, _mm512_cmpeq_epi32_mask(l, three), r[3]);
    _mm512_mask_storeu_epi32(raw + j, k, v);
  }
}

// det::log(det::sub(0, det::log(u))) for uniforms u (positive normal floats, and so is -log(u)).
DOMINO_AVX512 inline __m512 noise16(__m512 u) {
  return det_log16_normal(_mm512_sub_ps(_mm512_setzero_ps(), det_log16_normal(u)));
}

// rng::u32_to_uniform: (w >> 9) * 2^-23 + 2^-24, every step exact.
DOMINO_AVX512 inline __m512 uniform16(__m512i w) {
  return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 9)),
                                     _mm512_set1_ps(1.1920928955078125e-07f)),
                       _mm512_set1_ps(5.9604644775390625e-08f));
}

DOMINO_AVX512 void gumbel_keys_avx512(const float* s, int64_t n, uint32_t v0, const int32_t* ids,
                                      uint64_t seed, uint64_t offset, uint32_t stream, float* keys) {
  alignas(64) uint32_t raw[kChunk + 64];
  const int64_t lead = ids ? 0 : int64_t(v0 & 3u);  // element v0 is word `lead` of its block
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    if (ids) {
      raw_words_ids(ids + c0, len, seed, offset, stream, raw);
    } else {  // c0 is a multiple of 4: the chunk starts at word `lead` of block (v0 + c0) / 4
      raw_words_consecutive((v0 + uint32_t(c0)) >> 2, (lead + len + 3) / 4, seed, offset, stream, raw);
    }
    const uint32_t* wd = raw + lead;
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 k = len - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (len - j)) - 1u);
      const __m512 u = uniform16(_mm512_maskz_loadu_epi32(k, wd + j));
      const __m512 key = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + c0 + j), noise16(u));
      _mm512_mask_storeu_ps(keys + c0 + j, k, key);
    }
  }
}

DOMINO_AVX512 void gumbel_noise_avx512(const float* u, int64_t n, float* noise) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1u);
    // masked-off lanes: 0.5, a valid input (their results are not stored)
    _mm512_mask_storeu_ps(noise + j, k, noise16(_mm512_mask_loadu_ps(_mm512_set1_ps(0.5f), k, u + j)));
  }
}

DOMINO_AVX512 void softmax_row_avx512(float* q, int64_t n, float max, float sum) {
  const __m512 mv = _mm512_set1_ps(max), sv = _mm512_set1_ps(sum);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1u);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, q + j), mv);
    _mm512_mask_storeu_ps(q + j, k, _mm512_div_ps(det_exp16(x), sv));
  }
}
#endif  // DOMINO_X86

}  // namespace

void gumbel_keys(const float* s, int64_t n, uint32_t v0, const int32_t* ids, uint64_t seed,
                 uint64_t offset, uint32_t stream, float* keys) {
#ifdef DOMINO_X86
  if (have_avx512()) return gumbel_keys_avx512(s, n, v0, ids, seed, offset, stream, keys);
#endif
  uint32_t cached_block = 0xffffffffu;
  rng::U4 words{};
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t v = ids ? uint32_t(ids[j]) : v0 + uint32_t(j);
    if ((v >> 2) != cached_block) {
      cached_block = v >> 2;
      words = rng::raw4(seed, offset, stream, cached_block);
    }
    keys[j] = det::gumbel_key(s[j], rng::u32_to_uniform(rng::lane(words, v & 3u)));
  }
}

void gumbel_noise(const float* u, int64_t n, float* noise) {
#ifdef DOMINO_X86
  if (have_avx512()) return gumbel_noise_avx512(u, n, noise);
#endif
  for (int64_t j = 0; j < n; ++j) noise[j] = det::log(det::sub(0.0f, det::log(u[j])));
}

void softmax_row(float* q, int64_t n, float max, float sum) {
#ifdef DOMINO_X86
  if (have_avx512()) return softmax_row_avx512(q, n, max, sum);
#endif
  for (int64_t j = 0; j < n; ++j) q[j] = det::div(det::exp(det::sub(q[j], max)), sum);
}

}  // namespace cpu
}  // namespace rollout
}  // namespace domino
