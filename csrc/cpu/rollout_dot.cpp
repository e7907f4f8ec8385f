// CPU dot-product and tile kernels of the rollout (see rollout_dot.h): AVX-512 with a runtime
// check, portable fallback otherwise.
#include "rollout_dot.h"

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "domino/numerics.h"
#include "domino/rollout.h"
#include "det_avx512.h"

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

bool bf16_pairs() {
#ifdef DOMINO_X86
  // DOMINO_DISABLE_AVX512BF16=1 keeps the fp32-FMA kernel (for comparisons and tests).
  static const bool ok = have_avx512() && !std::getenv("DOMINO_DISABLE_AVX512BF16") &&
                         __builtin_cpu_supports("avx512bf16");
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

// 16 base logits (mask m) in fp32.
DOMINO_AVX512 inline __m512 load_base16(const void* base, DType dtype, int64_t j, __mmask16 m) {
  if (dtype == DType::F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + j);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + j);
  if (dtype == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

DOMINO_AVX512 float finish_scores_avx512(float* s, int64_t n, const void* base, DType dtype, bool add,
                                         float t) {
  const __m512 ninf = _mm512_set1_ps(-det::kInf), tv = _mm512_set1_ps(t);
  __m512 mx = ninf;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1u);
    __m512 v;
    if (!base)
      v = _mm512_maskz_loadu_ps(k, s + j);
    else if (add)
      v = _mm512_add_ps(load_base16(base, dtype, j, k), _mm512_maskz_loadu_ps(k, s + j));
    else
      v = load_base16(base, dtype, j, k);
    if (t > 0.0f) v = _mm512_div_ps(v, tv);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), ninf);
    _mm512_mask_storeu_ps(s + j, k, v);
    mx = _mm512_mask_max_ps(mx, k, v, mx);
  }
  return _mm512_reduce_max_ps(mx);
}

DOMINO_AVX512 float sum_exp_avx512(const float* x, int64_t n, float mx) {
  const __m512 mv = _mm512_set1_ps(mx);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;  // two chains
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    s0 = _mm512_add_ps(s0, exp_nonpos_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv)));
    s1 = _mm512_add_ps(s1, exp_nonpos_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), mv)));
  }
  for (; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1u);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-det::kInf), k, x + j);
    s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(k, exp_nonpos_avx512(_mm512_sub_ps(v, mv))));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

// ---- domino::det element math, 16 lanes (det_exp16: det_avx512.h) ----
DOMINO_AVX512 inline __m512 det_sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, det_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

DOMINO_AVX512 inline __m512 det_tanh16(__m512 x) {
  const __m512 two = _mm512_set1_ps(2.0f);
  return _mm512_sub_ps(_mm512_mul_ps(two, det_sigmoid16(_mm512_mul_ps(two, x))), _mm512_set1_ps(1.0f));
}

// to_bf16 (round to nearest even, NaN -> quiet NaN) and back, 16 lanes.
DOMINO_AVX512 inline __m512 round_bf16_16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512i rounded = _mm512_add_epi32(
      u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  const __m512i quiet = _mm512_or_si512(u, _mm512_set1_epi32(0x400000));
  const __m512i v = _mm512_mask_mov_epi32(rounded, nan, quiet);
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
}

DOMINO_AVX512 void gru_cells_avx512(const float* g, const float* gh, const float* hp, int64_t G,
                                    DType wdtype, float* h, int64_t k_end) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  for (int64_t k = 0; k < k_end; k += 16) {
    const __m512 gh_r = gh ? _mm512_loadu_ps(gh + k) : zero, gh_z = gh ? _mm512_loadu_ps(gh + G + k) : zero,
                 gh_n = gh ? _mm512_loadu_ps(gh + 2 * G + k) : zero, hv = hp ? _mm512_loadu_ps(hp + k) : zero;
    const __m512 r = det_sigmoid16(_mm512_add_ps(_mm512_loadu_ps(g + k), gh_r));
    const __m512 u = det_sigmoid16(_mm512_add_ps(_mm512_loadu_ps(g + G + k), gh_z));
    const __m512 n = det_tanh16(_mm512_add_ps(_mm512_loadu_ps(g + 2 * G + k), _mm512_mul_ps(r, gh_n)));
    __m512 out = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(one, u), n), _mm512_mul_ps(u, hv));
    if (wdtype == DType::BF16) out = round_bf16_16(out);
    _mm512_storeu_ps(h + k, out);
  }
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
// ---- vocabulary pass: weight rows converted in registers (see rollout_dot.h) --------------------
// A loader turns the 32-wide chunk k of a weight row into two fp32 vectors (a, b) in the packed
// activation order; the masked form reads only the first `rem` elements (the row tail).
struct LoadBF16 {
  using T = uint16_t;
  static DOMINO_AVX512 inline void full(const T* w, __m512& a, __m512& b) {
    const __m512i v = _mm512_loadu_si512(w);  // dword l = (w[2l + 1] << 16) | w[2l]
    a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
  static DOMINO_AVX512 inline void tail(const T* w, int rem, __m512& a, __m512& b) {
    const __m512i v = _mm512_maskz_loadu_epi16(__mmask32((uint64_t(1) << rem) - 1), w);
    a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xffff0000u))));
  }
};
struct LoadF16 {
  using T = uint16_t;
  static DOMINO_AVX512 inline void full(const T* w, __m512& a, __m512& b) {
    a = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    b = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16)));
  }
  static DOMINO_AVX512 inline void tail(const T* w, int rem, __m512& a, __m512& b) {
    const uint32_t m = uint32_t((uint64_t(1) << rem) - 1);
    a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16(m & 0xffffu), w));
    b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16(m >> 16), w + 16));
  }
};
struct LoadF32 {
  using T = float;
  static DOMINO_AVX512 inline void full(const T* w, __m512& a, __m512& b) {
    a = _mm512_loadu_ps(w);
    b = _mm512_loadu_ps(w + 16);
  }
  static DOMINO_AVX512 inline void tail(const T* w, int rem, __m512& a, __m512& b) {
    const uint32_t m = uint32_t((uint64_t(1) << rem) - 1);
    a = _mm512_maskz_loadu_ps(__mmask16(m & 0xffffu), w);
    b = _mm512_maskz_loadu_ps(__mmask16(m >> 16), w + 16);
  }
};

// Horizontal sums of 16 vectors in one: lane 4q + j = sum(v[4j + q]). A transposing tree (4 levels
// of 2 shuffles + 1 add per pair): 45 operations instead of the ~100 of four hsum4.
DOMINO_AVX512 inline __m512 pair_halves(__m512 x, __m512 y) {  // 256-bit halves: x in 0-7, y in 8-15
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
}
DOMINO_AVX512 inline __m512 pair_quarters(__m512 x, __m512 y) {  // 128-bit quarters of x, then y
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}
DOMINO_AVX512 inline __m512 reduce16(const __m512 (&v)[16]) {
  __m512 u[4];
  for (int j = 0; j < 4; ++j)  // quarter q of u[j]: the 4 partial sums of v[4j + q]
    u[j] = pair_quarters(pair_halves(v[4 * j], v[4 * j + 1]), pair_halves(v[4 * j + 2], v[4 * j + 3]));
  const __m512 z0 = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 z1 = _mm512_add_ps(_mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_ps(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(z0, z1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(z0, z1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// acc[r][c] (r < 4 weight rows, c < C activation rows) -> res[4 * c + r]: the 4 scores of an
// activation row are contiguous, so they leave as one 16-byte store.
template <int C>
DOMINO_AVX512 inline void reduce_block(const __m512 (&acc)[4][C], float* res) {
  if constexpr (C == 4) {
    _mm512_storeu_ps(res, reduce16({acc[0][0], acc[0][1], acc[0][2], acc[0][3], acc[1][0], acc[1][1],
                                    acc[1][2], acc[1][3], acc[2][0], acc[2][1], acc[2][2], acc[2][3],
                                    acc[3][0], acc[3][1], acc[3][2], acc[3][3]}));  // v[4r + c]
  } else {
    for (int c = 0; c < C; ++c) _mm_storeu_ps(res + 4 * c, hsum4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]));
  }
}

// Blocks of 4 weight rows x C activation rows: res[4 * c + r] = dot(W row r, X[c]). Per 32-wide
// chunk, the 4 rows' chunks are loaded once for the C activation rows (weight-stationary, 4 + C
// loads per 4C products). The block's lines are already in L1 (see score_rows_driver).
//
// fp32 FMA on weight rows converted in registers (loader L; activations from pack_rows, fp32).
template <typename L, int C>
DOMINO_AVX512 inline void score_block(const typename L::T* const* w, int64_t nfull, int rem,
                                      const float* X, int64_t ldx, float* res) {
  constexpr int S = C <= 2 ? 2 : 1;  // separate even/odd accumulators: enough FMA chains
  __m512 acc[4][C][S];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < C; ++c)
      for (int s = 0; s < S; ++s) acc[r][c][s] = _mm512_setzero_ps();
  auto step = [&](const __m512 (&wa)[4], const __m512 (&wb)[4], int64_t k) DOMINO_AVX512 {
    for (int c = 0; c < C; ++c) {
      const __m512 xa = _mm512_loadu_ps(X + c * ldx + k), xb = _mm512_loadu_ps(X + c * ldx + k + 16);
      for (int r = 0; r < 4; ++r) {
        acc[r][c][0] = _mm512_fmadd_ps(wa[r], xa, acc[r][c][0]);
        acc[r][c][S - 1] = _mm512_fmadd_ps(wb[r], xb, acc[r][c][S - 1]);
      }
    }
  };
  int64_t k = 0;
  for (int64_t i = 0; i < nfull; ++i, k += 32) {
    __m512 wa[4], wb[4];
    for (int r = 0; r < 4; ++r) L::full(w[r] + k, wa[r], wb[r]);
    step(wa, wb, k);
  }
  if (rem) {
    __m512 wa[4], wb[4];
    for (int r = 0; r < 4; ++r) L::tail(w[r] + k, rem, wa[r], wb[r]);
    step(wa, wb, k);
  }
  __m512 v[4][C];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < C; ++c) v[r][c] = S == 2 ? _mm512_add_ps(acc[r][c][0], acc[r][c][S - 1]) : acc[r][c][0];
  reduce_block<C>(v, res);
}

// bf16 weights x bf16 activations with vdpbf16ps (activations from pack_rows, bf16 bits). One loop
// over the chunks, the row tail as a masked load in its last trip, no lambda: GCC then keeps the
// 4C accumulators in registers from the zeroing to the reduction (with a lambda capturing them
// it spilled all of them to the stack around the loop: 17% slower in L2 at B = 8).
template <int C>
DOMINO_AVX512BF16 inline void score_block_bf16_pairs(const uint16_t* const* w, int64_t nfull, int rem,
                                                     const uint16_t* X, int64_t ldx, float* res) {
  __m512 acc[4][C];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t nchunks = nfull + (rem ? 1 : 0);
  const __mmask32 tail = rem ? __mmask32((uint64_t(1) << rem) - 1) : ~__mmask32(0);
  for (int64_t i = 0; i < nchunks; ++i) {
    const int64_t k = 32 * i;
    const __mmask32 m = i < nfull ? ~__mmask32(0) : tail;
    __m512i wv[4];
    for (int r = 0; r < 4; ++r) wv[r] = _mm512_maskz_loadu_epi16(m, w[r] + k);
    for (int c = 0; c < C; ++c) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(X + c * ldx + k);  // X is zero-padded
      for (int r = 0; r < 4; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], x);
    }
  }
  reduce_block<C>(acc, res);
}

// The row loop shared by both kernels: blocks of 4 rows (a short last block repeats its last row),
// activation rows in groups of 4, 2, 1. `block(w, C, Xc, res)` scores one block for C rows.
//
// Before the products, one byte of every line of the block is loaded, row after row: the stream
// then reaches memory in address order. The products read the rows interleaved (row 0 chunk k,
// row 1 chunk k, ...), and when those loads are the first touch the 512-byte stride defeats Zen 4's
// hardware prefetcher: measured on the 2-core box (bf16, E = 256, 2 threads / 1 thread), 19.7 / 9.4
// GB/s interleaved against 27.2 / 17.6 GB/s with this touch, the speed of a plain sequential read
// (27.7 / 15.7 GB/s). Non-temporal prefetches alone in the same order (the previous scheme): 22.3 /
// 12.5. `stream` (W2, read once per call): each line gets a non-temporal prefetch just before its
// touch, which keeps the 78 MB stream from evicting the GRU weights (read every step) from L3: at
// B = 1, 36-47 GB/s against 32-37 GB/s without it (same runs, interleaved).
template <typename T, typename Block>
DOMINO_AVX512 inline void score_rows_driver(const T* W, int64_t ldw, int64_t nrows, int64_t K,
                                            const void* X, int64_t ldx_bytes, int64_t A, float* out,
                                            int64_t ldo, bool stream, Block&& block) {
  for (int64_t r0 = 0; r0 < nrows; r0 += 4) {
    const int nr = int(std::min<int64_t>(4, nrows - r0));
    const T* w[4];
    for (int r = 0; r < 4; ++r) w[r] = W + (r0 + (r < nr ? r : nr - 1)) * ldw;
    for (int r = 0; r < nr; ++r) {
      const char* row = reinterpret_cast<const char*>(w[r]);
      if (stream)
        for (int64_t off = 0; off < K * int64_t(sizeof(T)); off += 64) _mm_prefetch(row + off, _MM_HINT_NTA);
      for (int64_t off = 0; off < K * int64_t(sizeof(T)); off += 64) {
        const char byte = row[off];
        __asm__ volatile("" : : "r"(byte));  // a real load, not removable, no use of the value
      }
    }
    alignas(64) float res[16];
    auto emit = [&](int64_t a, int C) {
      for (int c = 0; c < C; ++c) {
        float* o = out + (a + c) * ldo + r0;
        if (nr == 4)
          _mm_storeu_ps(o, _mm_load_ps(res + 4 * c));
        else
          for (int r = 0; r < nr; ++r) o[r] = res[4 * c + r];
      }
    };
    const char* Xb = static_cast<const char*>(X);
    int64_t a = 0;
    for (; a + 4 <= A; a += 4) { block(w, std::integral_constant<int, 4>{}, Xb + a * ldx_bytes, res); emit(a, 4); }
    for (; a + 2 <= A; a += 2) { block(w, std::integral_constant<int, 2>{}, Xb + a * ldx_bytes, res); emit(a, 2); }
    for (; a < A; ++a) { block(w, std::integral_constant<int, 1>{}, Xb + a * ldx_bytes, res); emit(a, 1); }
  }
}

template <typename L>
DOMINO_AVX512 void score_rows_avx512(const typename L::T* W, int64_t ldw, int64_t nrows, int64_t K,
                                     const float* X, int64_t ldx, int64_t A, float* out, int64_t ldo,
                                     bool stream) {
  const int64_t nfull = K / 32;
  const int rem = int(K % 32);
  score_rows_driver(W, ldw, nrows, K, X, ldx * int64_t(sizeof(float)), A, out, ldo, stream,
                    [&](const typename L::T* const* w, auto C, const char* Xc, float* res) DOMINO_AVX512 {
                      score_block<L, decltype(C)::value>(w, nfull, rem, reinterpret_cast<const float*>(Xc), ldx, res);
                    });
}

// C activation rows x one packed group of 16 vocabulary rows; the activation pair j is broadcast
// from X (bf16 pairs, read as 32-bit words). S partial accumulators per row keep >= 8 independent
// vdpbf16ps chains in flight at every C (the latency is ~6 cycles, one issues per cycle).
template <int C>
DOMINO_AVX512BF16 inline void score_group_packed(const uint32_t* Pg, int64_t J, const uint16_t* X,
                                                 int64_t ldx, float* out, int64_t ldo) {
  constexpr int S = C >= 8 ? 1 : 8 / C;
  __m512 acc[C][S];
  for (int c = 0; c < C; ++c)
    for (int s = 0; s < S; ++s) acc[c][s] = _mm512_setzero_ps();
  auto pair = [&](int c, int64_t j) DOMINO_AVX512BF16 {
    uint32_t v;
    __builtin_memcpy(&v, X + c * ldx + 2 * j, sizeof(v));
    return (__m512bh)_mm512_set1_epi32(int(v));
  };
  int64_t j = 0;
  for (; j + S <= J; j += S)
    for (int s = 0; s < S; ++s) {
      const __m512bh w = (__m512bh)_mm512_loadu_si512(Pg + (j + s) * kPackRows);
      for (int c = 0; c < C; ++c) acc[c][s] = _mm512_dpbf16_ps(acc[c][s], w, pair(c, j + s));
    }
  for (; j < J; ++j) {
    const __m512bh w = (__m512bh)_mm512_loadu_si512(Pg + j * kPackRows);
    for (int c = 0; c < C; ++c) acc[c][0] = _mm512_dpbf16_ps(acc[c][0], w, pair(c, j));
  }
  for (int c = 0; c < C; ++c) {
    __m512 v = acc[c][0];
    for (int s = 1; s < S; ++s) v = _mm512_add_ps(v, acc[c][s]);
    _mm512_storeu_ps(out + c * ldo, v);
  }
}

DOMINO_AVX512BF16 void score_groups_packed_avx512(const uint32_t* P, int64_t J, int64_t ngroups,
                                                  const uint16_t* X, int64_t ldx, int64_t A,
                                                  float* out, int64_t ldo) {
  for (int64_t g = 0; g < ngroups; ++g) {
    const uint32_t* Pg = P + g * J * kPackRows;
    float* o = out + g * kPackRows;
    int64_t a = 0;
    for (; a + 8 <= A; a += 8) score_group_packed<8>(Pg, J, X + a * ldx, ldx, o + a * ldo, ldo);
    for (; a + 4 <= A; a += 4) score_group_packed<4>(Pg, J, X + a * ldx, ldx, o + a * ldo, ldo);
    for (; a + 2 <= A; a += 2) score_group_packed<2>(Pg, J, X + a * ldx, ldx, o + a * ldo, ldo);
    for (; a < A; ++a) score_group_packed<1>(Pg, J, X + a * ldx, ldx, o + a * ldo, ldo);
  }
}

DOMINO_AVX512BF16 void score_rows_bf16_pairs_avx512(const uint16_t* W, int64_t ldw, int64_t nrows,
                                                    int64_t K, const uint16_t* X, int64_t ldx,
                                                    int64_t A, float* out, int64_t ldo, bool stream) {
  const int64_t nfull = K / 32;
  const int rem = int(K % 32);
  score_rows_driver(W, ldw, nrows, K, X, ldx * int64_t(sizeof(uint16_t)), A, out, ldo, stream,
                    [&](const uint16_t* const* w, auto C, const char* Xc, float* res) DOMINO_AVX512BF16 {
                      score_block_bf16_pairs<decltype(C)::value>(w, nfull, rem, reinterpret_cast<const uint16_t*>(Xc), ldx, res);
                    });
}

#endif

}  // namespace

bool scores_in_registers() { return have_avx512(); }

PackedRows pack_rows(const float* X, int64_t ldx, int64_t A, int64_t K, DType wdtype) {
  PackedRows p;
  p.bf16_pairs = wdtype == DType::BF16 && bf16_pairs();
  p.ld = pad32(K);
  if (p.bf16_pairs) {
    p.bits.assign(A * p.ld, 0);
    for (int64_t a = 0; a < A; ++a)
      for (int64_t k = 0; k < K; ++k) p.bits[a * p.ld + k] = to_bf16(X[a * ldx + k]).bits;
    return p;
  }
  p.f32.assign(A * p.ld, 0.0f);
  for (int64_t a = 0; a < A; ++a) {
    const float* x = X + a * ldx;
    float* dst = &p.f32[a * p.ld];
    if (wdtype != DType::BF16) {
      std::copy(x, x + K, dst);
      continue;
    }
    for (int64_t c = 0; c < p.ld; c += 32)
      for (int64_t l = 0; l < 16; ++l) {
        const int64_t e = c + 2 * l, o = e + 1;
        if (e < K) dst[c + l] = x[e];
        if (o < K) dst[c + 16 + l] = x[o];
      }
  }
  return p;
}

void score_rows(const void* W, DType wdtype, int64_t ldw, int64_t nrows, int64_t K,
                const PackedRows& X, int64_t A, float* out, int64_t ldo, bool stream) {
#ifdef DOMINO_X86
  if (X.bf16_pairs)
    return score_rows_bf16_pairs_avx512(static_cast<const uint16_t*>(W), ldw, nrows, K, X.bits.data(), X.ld, A,
                                        out, ldo, stream);
  if (have_avx512()) {
    const float* x = X.f32.data();
    switch (wdtype) {
      case DType::BF16:
        return score_rows_avx512<LoadBF16>(static_cast<const uint16_t*>(W), ldw, nrows, K, x, X.ld, A, out, ldo, stream);
      case DType::F16:
        return score_rows_avx512<LoadF16>(static_cast<const uint16_t*>(W), ldw, nrows, K, x, X.ld, A, out, ldo, stream);
      case DType::F32:
        return score_rows_avx512<LoadF32>(static_cast<const float*>(W), ldw, nrows, K, x, X.ld, A, out, ldo, stream);
    }
  }
#endif
  (void)W; (void)wdtype; (void)ldw; (void)nrows; (void)K; (void)X; (void)A; (void)out; (void)ldo; (void)stream;
  std::abort();  // callers check scores_in_registers()
}

void score_groups_packed(const uint32_t* P, int64_t J, int64_t ngroups, const PackedRows& X,
                         int64_t A, float* out, int64_t ldo) {
#ifdef DOMINO_X86
  if (X.bf16_pairs) return score_groups_packed_avx512(P, J, ngroups, X.bits.data(), X.ld, A, out, ldo);
#endif
  (void)P; (void)J; (void)ngroups; (void)X; (void)A; (void)out; (void)ldo;
  std::abort();  // callers check X.bf16_pairs
}

float finish_scores(float* s, int64_t n, const void* base, DType base_dtype, bool add, float t) {
#ifdef DOMINO_X86
  if (have_avx512()) return finish_scores_avx512(s, n, base, base_dtype, add, t);
#endif
  float mx = -det::kInf;
  dispatch_dtype(base_dtype, [&](auto tag) {
    using Tb = decltype(tag);
    const Tb* b = static_cast<const Tb*>(base);
    for (int64_t j = 0; j < n; ++j) {
      float v = !b ? s[j] : add ? det::add(to_float(b[j]), s[j]) : to_float(b[j]);
      if (t > 0.0f) v = det::div(v, t);
      if (det::is_nan(v)) v = -det::kInf;
      s[j] = v;
      if (v > mx) mx = v;
    }
  });
  return mx;
}

float sum_exp(const float* s, int64_t n, float max) {
#ifdef DOMINO_X86
  if (have_avx512()) return sum_exp_avx512(s, n, max);
#endif
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += det::exp(det::sub(s[j], max));
  return sum;
}

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

void gru_cells(const float* g, const float* gh, const float* hp, int64_t G, DType wdtype, float* h) {
  int64_t k = 0;
#ifdef DOMINO_X86
  if (have_avx512() && wdtype != DType::F16) {  // fp16 rounding stays scalar
    k = G / 16 * 16;
    gru_cells_avx512(g, gh, hp, G, wdtype, h, k);
  }
#endif
  for (; k < G; ++k)
    h[k] = to_weight_precision(gru_cell(g[k], g[G + k], g[2 * G + k], gh ? gh[k] : 0.0f, gh ? gh[G + k] : 0.0f,
                                        gh ? gh[2 * G + k] : 0.0f, hp ? hp[k] : 0.0f), wdtype);
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

bool cpu_uses_packed_w2() { return cpu::bf16_pairs(); }

void pack_w2_bf16(const uint16_t* w2, int64_t V, int64_t E, int64_t g0, int64_t g1, uint32_t* packed) {
  const int64_t J = packed_w2_pairs(E);
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t j = 0; j < J; ++j)
      for (int64_t l = 0; l < kPackRows; ++l) {
        const int64_t r = g * kPackRows + l, e = 2 * j;
        const uint32_t lo = r < V ? w2[r * E + e] : 0u;
        const uint32_t hi = r < V && e + 1 < E ? w2[r * E + e + 1] : 0u;
        packed[(g * J + j) * kPackRows + l] = lo | hi << 16;
      }
}

}  // namespace rollout
}  // namespace domino
