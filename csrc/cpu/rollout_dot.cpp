// CPU dot-product and tile kernels of the rollout (see rollout_dot.h): AVX-512 with a runtime
// check, portable fallback otherwise.
#include "rollout_dot.h"

#include <cmath>
#include <cstdlib>

#include "domino/numerics.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DOMINO_X86 1
#define DOMINO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
// GCC 12 false positive: avx512fintrin.h's _mm512_undefined_* (`__m512i __Y = __Y;`) inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace domino {
namespace rollout {
namespace cpu {

bool have_avx512() {
#ifdef DOMINO_X86
  // DOMINO_DISABLE_AVX512=1 forces the portable code (the tests run it that way too).
  static const bool ok = !std::getenv("DOMINO_DISABLE_AVX512") &&
                         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return ok;
#else
  return false;
#endif
}

namespace {

template <typename T>
void to_f32_row_portable(const T* src, int64_t K, int64_t Kp, float* dst) {
  for (int64_t k = 0; k < K; ++k) dst[k] = to_float(src[k]);
  for (int64_t k = K; k < Kp; ++k) dst[k] = 0.0f;
}

#ifdef DOMINO_X86
DOMINO_AVX512 void bf16_to_f32_avx512(const uint16_t* src, int64_t K, int64_t Kp, float* dst) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
    _mm512_storeu_ps(dst + k, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  for (; k < K; ++k) dst[k] = bits_to_float(uint32_t(src[k]) << 16);
  for (; k < Kp; ++k) dst[k] = 0.0f;
}

DOMINO_AVX512 void f16_to_f32_avx512(const uint16_t* src, int64_t K, int64_t Kp, float* dst) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    _mm512_storeu_ps(dst + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k))));
  for (; k < K; ++k) dst[k] = to_float(f16_t{src[k]});
  for (; k < Kp; ++k) dst[k] = 0.0f;
}

DOMINO_AVX512 inline __m256 half(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
DOMINO_AVX512 inline __m128 quarter(__m256 v) {
  return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

// Horizontal sums of 4 vectors -> [s0, s1, s2, s3].
DOMINO_AVX512 inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m128 q0 = quarter(half(a0)), q1 = quarter(half(a1)), q2 = quarter(half(a2)),
               q3 = quarter(half(a3));
  return _mm_hadd_ps(_mm_hadd_ps(q0, q1), _mm_hadd_ps(q2, q3));
}

DOMINO_AVX512 void dot_block_avx512(const float* w, int nrows, int64_t Kp, const float* X,
                                    int64_t ldx, int64_t A, float* out, int64_t ldo) {
  const float* w0 = w;
  const float* w1 = w + Kp;
  const float* w2 = w + 2 * Kp;
  const float* w3 = w + 3 * Kp;
  int64_t a = 0;
  for (; a + 4 <= A; a += 4) {  // 4 weight rows x 4 activation rows: 8 loads per 16 FMAs
    const float* x0 = X + a * ldx;
    const float* x1 = x0 + ldx;
    const float* x2 = x1 + ldx;
    const float* x3 = x2 + ldx;
    __m512 c[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) c[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < Kp; k += 16) {
      const __m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);
      const __m512 v2 = _mm512_loadu_ps(w2 + k), v3 = _mm512_loadu_ps(w3 + k);
      const __m512 xs[4] = {_mm512_loadu_ps(x0 + k), _mm512_loadu_ps(x1 + k),
                            _mm512_loadu_ps(x2 + k), _mm512_loadu_ps(x3 + k)};
      for (int i = 0; i < 4; ++i) {
        c[i][0] = _mm512_fmadd_ps(v0, xs[i], c[i][0]);
        c[i][1] = _mm512_fmadd_ps(v1, xs[i], c[i][1]);
        c[i][2] = _mm512_fmadd_ps(v2, xs[i], c[i][2]);
        c[i][3] = _mm512_fmadd_ps(v3, xs[i], c[i][3]);
      }
    }
    for (int i = 0; i < 4; ++i) {
      alignas(16) float s[4];
      _mm_store_ps(s, hsum4(c[i][0], c[i][1], c[i][2], c[i][3]));
      for (int j = 0; j < nrows; ++j) out[(a + i) * ldo + j] = s[j];
    }
  }
  for (; a + 2 <= A; a += 2) {  // two activation rows share each weight load
    const float* x0 = X + a * ldx;
    const float* x1 = x0 + ldx;
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
    __m512 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __m512 xa = _mm512_loadu_ps(x0 + k), xb = _mm512_loadu_ps(x1 + k);
      const __m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);
      const __m512 v2 = _mm512_loadu_ps(w2 + k), v3 = _mm512_loadu_ps(w3 + k);
      c00 = _mm512_fmadd_ps(v0, xa, c00); c01 = _mm512_fmadd_ps(v1, xa, c01);
      c02 = _mm512_fmadd_ps(v2, xa, c02); c03 = _mm512_fmadd_ps(v3, xa, c03);
      c10 = _mm512_fmadd_ps(v0, xb, c10); c11 = _mm512_fmadd_ps(v1, xb, c11);
      c12 = _mm512_fmadd_ps(v2, xb, c12); c13 = _mm512_fmadd_ps(v3, xb, c13);
    }
    alignas(16) float s0[4], s1[4];
    _mm_store_ps(s0, hsum4(c00, c01, c02, c03));
    _mm_store_ps(s1, hsum4(c10, c11, c12, c13));
    for (int j = 0; j < nrows; ++j) {
      out[a * ldo + j] = s0[j];
      out[(a + 1) * ldo + j] = s1[j];
    }
  }
  for (; a < A; ++a) {
    const float* x0 = X + a * ldx;
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __m512 xa = _mm512_loadu_ps(x0 + k);
      c0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + k), xa, c0);
      c1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + k), xa, c1);
      c2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + k), xa, c2);
      c3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + k), xa, c3);
    }
    alignas(16) float s[4];
    _mm_store_ps(s, hsum4(c0, c1, c2, c3));
    for (int j = 0; j < nrows; ++j) out[a * ldo + j] = s[j];
  }
}

// exp(y) for y <= 0 (inputs clamped to >= -100: exp is ~0 there), ~2 ulp; only used for the
// softmax normaliser (q values), never for a decision.
DOMINO_AVX512 inline __m512 exp_nonpos_avx512(__m512 y) {
  y = _mm512_max_ps(y, _mm512_set1_ps(-100.0f));  // NaN in y -> -100 (max returns 2nd operand)
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), y);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.98412698e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888889e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333333e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666667e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666667e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

DOMINO_AVX512 void sanitize_max_sumexp_avx512(float* x, int64_t n, float& max, float& sum) {
  const __m512 ninf = _mm512_set1_ps(-det::kInf);
  __m512 m = ninf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 v = _mm512_loadu_ps(x + j);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    if (nan) {
      v = _mm512_mask_mov_ps(v, nan, ninf);
      _mm512_storeu_ps(x + j, v);
    }
    m = _mm512_max_ps(v, m);
  }
  float mx = _mm512_reduce_max_ps(m);
  for (; j < n; ++j) {
    if (det::is_nan(x[j])) x[j] = -det::kInf;
    if (x[j] > mx) mx = x[j];
  }
  max = mx;
  if (!(mx > -det::kInf)) {
    sum = 0.0f;
    return;
  }
  const __m512 mv = _mm512_set1_ps(mx);
  __m512 s = _mm512_setzero_ps();
  j = 0;
  for (; j + 16 <= n; j += 16) s = _mm512_add_ps(s, exp_nonpos_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv)));
  if (j < n) {
    const __mmask16 k = __mmask16((1u << (n - j)) - 1u);
    const __m512 v = _mm512_mask_loadu_ps(ninf, k, x + j);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, exp_nonpos_avx512(_mm512_sub_ps(v, mv))));
  }
  sum = _mm512_reduce_add_ps(s);
}

DOMINO_AVX512 void scale_inplace_avx512(float* x, int64_t n, float t) {
  const __m512 tv = _mm512_set1_ps(t);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, _mm512_div_ps(_mm512_loadu_ps(x + j), tv));
  for (; j < n; ++j) x[j] = det::div(x[j], t);
}

DOMINO_AVX512 int64_t find_first_avx512(const float* x, int64_t n, float value) {
  const __m512 v = _mm512_set1_ps(value);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j), v, _CMP_EQ_OQ);
    if (m) return j + __builtin_ctz(m);
  }
  for (; j < n; ++j)
    if (x[j] == value) return j;
  return n;
}
#endif

}  // namespace

void to_f32_row(const void* src, DType dtype, int64_t K, int64_t Kp, float* dst) {
#ifdef DOMINO_X86
  if (have_avx512()) {
    if (dtype == DType::BF16) return bf16_to_f32_avx512(static_cast<const uint16_t*>(src), K, Kp, dst);
    if (dtype == DType::F16) return f16_to_f32_avx512(static_cast<const uint16_t*>(src), K, Kp, dst);
  }
#endif
  switch (dtype) {
    case DType::F32: return to_f32_row_portable(static_cast<const float*>(src), K, Kp, dst);
    case DType::BF16: return to_f32_row_portable(static_cast<const bf16_t*>(src), K, Kp, dst);
    case DType::F16: return to_f32_row_portable(static_cast<const f16_t*>(src), K, Kp, dst);
  }
}

void dot_block(const float* w, int nrows, int64_t Kp, const float* X, int64_t ldx, int64_t A,
               float* out, int64_t ldo) {
#ifdef DOMINO_X86
  if (have_avx512()) return dot_block_avx512(w, nrows, Kp, X, ldx, A, out, ldo);
#endif
  for (int64_t a = 0; a < A; ++a) {
    const float* x = X + a * ldx;
    for (int j = 0; j < nrows; ++j) {
      const float* wr = w + j * Kp;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 independent chains: vectorizable, no reassociation
      for (int64_t k = 0; k < Kp; k += 8)
        for (int l = 0; l < 8; ++l) acc[l] += wr[k + l] * x[k + l];
      out[a * ldo + j] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
  }
}

void sanitize_max_sumexp(float* x, int64_t n, float& max, float& sum) {
#ifdef DOMINO_X86
  if (have_avx512()) return sanitize_max_sumexp_avx512(x, n, max, sum);
#endif
  float mx = -det::kInf;
  for (int64_t j = 0; j < n; ++j) {
    if (det::is_nan(x[j])) x[j] = -det::kInf;
    if (x[j] > mx) mx = x[j];
  }
  max = mx;
  sum = 0.0f;
  if (!(mx > -det::kInf)) return;
  for (int64_t j = 0; j < n; ++j) sum += det::exp(det::sub(x[j], mx));
}

void scale_inplace(float* x, int64_t n, float t) {
#ifdef DOMINO_X86
  if (have_avx512()) return scale_inplace_avx512(x, n, t);
#endif
  for (int64_t j = 0; j < n; ++j) x[j] = det::div(x[j], t);
}

int64_t find_first(const float* x, int64_t n, float value) {
#ifdef DOMINO_X86
  if (have_avx512()) return find_first_avx512(x, n, value);
#endif
  for (int64_t j = 0; j < n; ++j)
    if (x[j] == value) return j;
  return n;
}

}  // namespace cpu
}  // namespace rollout
}  // namespace domino
