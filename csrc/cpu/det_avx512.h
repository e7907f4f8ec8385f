// det_avx512.h (CPU-private): domino::det element math on 16 lanes, for the AVX-512 kernels of
// the rollout (GRU cells, Gumbel keys, q rows).
//
// Contract: every function here performs the same IEEE operations in the same order as its scalar
// counterpart in domino/numerics.h, so it returns the same bits on the stated input range. That
// is what keeps the CPU kernels equal to the CUDA kernels and to the reference, draw for draw.
// It holds only without FMA contraction: the project compiles with -ffp-contract=off (setup.py,
// CMakeLists.txt), and the intrinsics below are plain vector mul / add under that flag.
// tests/cpp/test_rollout_simd.cpp checks each function against the scalar code (exhaustively over
// the ranges the rollout uses).
//
// Callers put the functions in DOMINO_AVX512 functions and call those only when
// cpu::have_avx512() (runtime dispatch: the build runs on CPUs without AVX-512).
#pragma once

#include "domino/numerics.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DOMINO_X86 1
#define DOMINO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define DOMINO_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))
// GCC 12 false positive: avx512fintrin.h's _mm512_undefined_* (`__m512i __Y = __Y;`) inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#ifdef DOMINO_X86
namespace domino {
namespace rollout {
namespace cpu {

// det::exp, every input (NaN, +-inf, overflow and underflow included).
DOMINO_AVX512 inline __m512 det_exp16(__m512 x) {
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __mmask16 big = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.72f), _CMP_GT_OQ);
  const __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33f), _CMP_LT_OQ);
  const __m512 kf = _mm512_roundscale_ps(
      _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(kf, _mm512_set1_ps(0.693145751953125f))),
                                 _mm512_mul_ps(kf, _mm512_set1_ps(1.428606765330187e-06f)));
  __m512 p = _mm512_set1_ps(1.98412698e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.38888889e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.33333333e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.16666667e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.66666667e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
  const __m512i k = _mm512_cvttps_epi32(kf);  // kf is integral (masked lanes: any value)
  // k1 = k / 2 truncated toward zero (C semantics), k2 = k - k1
  const __m512i k1 = _mm512_srai_epi32(_mm512_add_epi32(k, _mm512_srli_epi32(k, 31)), 1);
  const __m512i k2 = _mm512_sub_epi32(k, k1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, bias), 23));
  const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k2, bias), 23));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
  y = _mm512_mask_mov_ps(y, small, _mm512_setzero_ps());
  y = _mm512_mask_mov_ps(y, big, _mm512_set1_ps(det::kInf));
  return _mm512_mask_mov_ps(y, nan, x);
}

// det::log for x a positive, normal, finite float (no NaN / zero / subnormal / inf branches: the
// Gumbel noise only takes logs of uniforms in [2^-24, 1 - 2^-24] and of -log(u) in (0, 17)).
DOMINO_AVX512 inline __m512 det_log16_normal(__m512 x) {
  const __m512i ix = _mm512_castps_si512(x);
  __m512i k = _mm512_sub_epi32(_mm512_srli_epi32(ix, 23), _mm512_set1_epi32(127));
  const __m512i m = _mm512_and_si512(ix, _mm512_set1_epi32(0x007fffff));
  // mantissa in [sqrt(2)/2, sqrt(2)): m > 0x3504f3 -> [0.707, 1) and k + 1, else [1, 1.414)
  const __mmask16 hi = _mm512_cmpgt_epi32_mask(m, _mm512_set1_epi32(0x3504f3));
  const __m512i expo = _mm512_mask_mov_epi32(_mm512_set1_epi32(0x3f800000), hi, _mm512_set1_epi32(0x3f000000));
  k = _mm512_mask_add_epi32(k, hi, k, _mm512_set1_epi32(1));
  const __m512 mf = _mm512_castsi512_ps(_mm512_or_si512(m, expo));
  const __m512 f = _mm512_sub_ps(mf, _mm512_set1_ps(1.0f));
  const __m512 s = _mm512_div_ps(f, _mm512_add_ps(_mm512_set1_ps(2.0f), f));
  const __m512 z = _mm512_mul_ps(s, s);
  const __m512 w = _mm512_mul_ps(z, z);
  const __m512 t1 = _mm512_mul_ps(w, _mm512_add_ps(_mm512_set1_ps(0.40000972152f),
                                                   _mm512_mul_ps(w, _mm512_set1_ps(0.24279078841f))));
  const __m512 t2 = _mm512_mul_ps(z, _mm512_add_ps(_mm512_set1_ps(0.66666662693f),
                                                   _mm512_mul_ps(w, _mm512_set1_ps(0.28498786688f))));
  const __m512 R = _mm512_add_ps(t2, t1);
  const __m512 hfsq = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), f), f);
  const __m512 dk = _mm512_cvtepi32_ps(k);
  const __m512 inner = _mm512_add_ps(_mm512_mul_ps(s, _mm512_add_ps(hfsq, R)),
                                     _mm512_mul_ps(dk, _mm512_set1_ps(9.0580006145e-06f)));
  return _mm512_sub_ps(_mm512_mul_ps(dk, _mm512_set1_ps(6.9313812256e-01f)),
                       _mm512_sub_ps(_mm512_sub_ps(hfsq, inner), f));
}

}  // namespace cpu
}  // namespace rollout
}  // namespace domino
#endif  // DOMINO_X86
