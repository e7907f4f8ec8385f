// CPU implementation of domino::attention (semantics in domino/attention.h).
//
// Work item = a tile of up to 128 query rows (all group heads x consecutive new tokens) of one
// (request, KV head), over a range of key positions. The tile's queries are transposed once
// (QT [D][rows], pre-scaled); each 32-key block of K/V is gathered from its pages and converted
// to fp32 once and used by every row of the tile. Scores are kept transposed (ST [key][row]) so
// that S = K QT, the online softmax (vectorised over rows) and O += P V all run on contiguous
// vectors with no transposition of K. The mask is evaluated only on blocks that contain new
// tokens or unbacked positions. Long prefixes with few rows are split over several items whose
// partial (out, lse) are merged afterwards, so small batches still use every thread.
// Micro-kernels have an AVX2+FMA version picked at run time and a portable one.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DOMINO_ATTN_X86 1
#endif

#include "domino/attention.h"

namespace domino {
namespace attention {
namespace {

constexpr int64_t kKeyBlock = 32;       // keys per block (K and V blocks stay in L1)
constexpr int64_t kRowTile = 128;       // query rows per work item
constexpr int64_t kMinSplitKeys = 512;  // a split covers at least this many keys
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Shapes shared by the micro-kernels: rp = padded row count (multiple of 8), QT [D][rp],
// K/V [kKeyBlock][dp] (dp = head_dim rounded up to 16, zero padded), ST [kKeyBlock][rp],
// O [rp][dp]; m, l, alpha [rp].

// ---- portable micro-kernels ---------------------------------------------------------------
void qk_portable(const float* QT, const float* K, float* ST, int64_t rp, int64_t D, int64_t dp) {
  std::fill(ST, ST + kKeyBlock * rp, 0.0f);
  for (int64_t j = 0; j < kKeyBlock; ++j) {
    float* st = ST + j * rp;
    for (int64_t d = 0; d < D; ++d) {
      const float kd = K[j * dp + d];
      const float* qt = QT + d * rp;
      for (int64_t r = 0; r < rp; ++r) st[r] += kd * qt[r];
    }
  }
}

void pv_portable(const float* PT, const float* V, float* O, int64_t R, int64_t rp, int64_t dp) {
  for (int64_t r = 0; r < R; ++r) {
    float* o = O + r * dp;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const float pj = PT[j * rp + r];
      if (pj == 0.0f) continue;
      for (int64_t d = 0; d < dp; ++d) o[d] += pj * V[j * dp + d];
    }
  }
}

// Online softmax over one key block for every row: m_new = max(m, max_j s), s <- exp(s - m_new),
// alpha = exp(m - m_new) (0 while nothing was visible), l <- l * alpha + sum_j s. A row that has
// seen nothing keeps m = -inf and gets s = 0.
void softmax_portable(float* ST, float* m, float* l, float* alpha, int64_t rp) {
  for (int64_t r = 0; r < rp; ++r) {
    float mx = m[r];
    for (int64_t j = 0; j < kKeyBlock; ++j) mx = std::max(mx, ST[j * rp + r]);
    const float base = mx == kNegInf ? 0.0f : mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < kKeyBlock; ++j) sum += (ST[j * rp + r] = std::exp(ST[j * rp + r] - base));
    alpha[r] = std::exp(m[r] - base);
    l[r] = l[r] * alpha[r] + sum;
    m[r] = mx;
  }
}

#ifdef DOMINO_ATTN_X86
#define DOMINO_AVX2 __attribute__((target("avx2,fma")))

// Accumulators are named variables, not arrays: GCC keeps arrays of __m256 in memory and
// stores them back every iteration, which halves the throughput of these loops.
//
// ST[j0..j0+4)[r0..r0+8*NC) = K[j0..j0+4) . QT[:, r0..r0+8*NC)
template <int NC>
DOMINO_AVX2 inline void qk_tile_avx2(const float* QT, const float* K, float* ST, int64_t rp,
                                     int64_t D, int64_t dp, int64_t j0, int64_t r0) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, b0 = a0, b1 = a0, b2 = a0, c0 = a0, c1 = a0,
         c2 = a0, e0 = a0, e1 = a0, e2 = a0;
  const float *k0p = K + j0 * dp, *k1p = k0p + dp, *k2p = k1p + dp, *k3p = k2p + dp;
  // 12 accumulators + 3 query vectors + 1 broadcast key = the 16 ymm registers: each key is
  // broadcast right before its three FMAs so that nothing spills.
  for (int64_t d = 0; d < D; ++d) {
    const float* qt = QT + d * rp + r0;
    const __m256 q0 = _mm256_loadu_ps(qt);
    const __m256 q1 = NC >= 2 ? _mm256_loadu_ps(qt + 8) : q0;
    const __m256 q2 = NC >= 3 ? _mm256_loadu_ps(qt + 16) : q0;
    __m256 k = _mm256_broadcast_ss(k0p + d);
    a0 = _mm256_fmadd_ps(k, q0, a0);
    if (NC >= 2) a1 = _mm256_fmadd_ps(k, q1, a1);
    if (NC >= 3) a2 = _mm256_fmadd_ps(k, q2, a2);
    k = _mm256_broadcast_ss(k1p + d);
    b0 = _mm256_fmadd_ps(k, q0, b0);
    if (NC >= 2) b1 = _mm256_fmadd_ps(k, q1, b1);
    if (NC >= 3) b2 = _mm256_fmadd_ps(k, q2, b2);
    k = _mm256_broadcast_ss(k2p + d);
    c0 = _mm256_fmadd_ps(k, q0, c0);
    if (NC >= 2) c1 = _mm256_fmadd_ps(k, q1, c1);
    if (NC >= 3) c2 = _mm256_fmadd_ps(k, q2, c2);
    k = _mm256_broadcast_ss(k3p + d);
    e0 = _mm256_fmadd_ps(k, q0, e0);
    if (NC >= 2) e1 = _mm256_fmadd_ps(k, q1, e1);
    if (NC >= 3) e2 = _mm256_fmadd_ps(k, q2, e2);
  }
  float* s0 = ST + j0 * rp + r0;
  _mm256_storeu_ps(s0, a0); _mm256_storeu_ps(s0 + rp, b0);
  _mm256_storeu_ps(s0 + 2 * rp, c0); _mm256_storeu_ps(s0 + 3 * rp, e0);
  if (NC >= 2) {
    _mm256_storeu_ps(s0 + 8, a1); _mm256_storeu_ps(s0 + rp + 8, b1);
    _mm256_storeu_ps(s0 + 2 * rp + 8, c1); _mm256_storeu_ps(s0 + 3 * rp + 8, e1);
  }
  if (NC >= 3) {
    _mm256_storeu_ps(s0 + 16, a2); _mm256_storeu_ps(s0 + rp + 16, b2);
    _mm256_storeu_ps(s0 + 2 * rp + 16, c2); _mm256_storeu_ps(s0 + 3 * rp + 16, e2);
  }
}

DOMINO_AVX2 void qk_avx2(const float* QT, const float* K, float* ST, int64_t rp, int64_t D,
                         int64_t dp) {
  // Rows outer: a 24-row slice of QT (D x 96 B) stays in L1 while all 32 keys pass over it.
  int64_t r0 = 0;
  for (; r0 + 24 <= rp; r0 += 24)
    for (int64_t j0 = 0; j0 < kKeyBlock; j0 += 4) qk_tile_avx2<3>(QT, K, ST, rp, D, dp, j0, r0);
  if (rp - r0 == 16)
    for (int64_t j0 = 0; j0 < kKeyBlock; j0 += 4) qk_tile_avx2<2>(QT, K, ST, rp, D, dp, j0, r0);
  else if (rp - r0 == 8)
    for (int64_t j0 = 0; j0 < kKeyBlock; j0 += 4) qk_tile_avx2<1>(QT, K, ST, rp, D, dp, j0, r0);
}

// O[r..r+4)[:] += sum_j PT[j][r..r+4) V[j][:], 16 columns at a time (dp is a multiple of 16).
DOMINO_AVX2 inline void pv_4rows_avx2(const float* PT, const float* V, float* O, int64_t rp,
                                      int64_t dp) {
  float *o0 = O, *o1 = O + dp, *o2 = O + 2 * dp, *o3 = O + 3 * dp;
  for (int64_t d = 0; d < dp; d += 16) {
    __m256 a0 = _mm256_loadu_ps(o0 + d), a1 = _mm256_loadu_ps(o0 + d + 8);
    __m256 b0 = _mm256_loadu_ps(o1 + d), b1 = _mm256_loadu_ps(o1 + d + 8);
    __m256 c0 = _mm256_loadu_ps(o2 + d), c1 = _mm256_loadu_ps(o2 + d + 8);
    __m256 e0 = _mm256_loadu_ps(o3 + d), e1 = _mm256_loadu_ps(o3 + d + 8);
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const float* pj = PT + j * rp;
      const __m256 v0 = _mm256_loadu_ps(V + j * dp + d), v1 = _mm256_loadu_ps(V + j * dp + d + 8);
      const __m256 x = _mm256_broadcast_ss(pj), y = _mm256_broadcast_ss(pj + 1),
                   z = _mm256_broadcast_ss(pj + 2), w = _mm256_broadcast_ss(pj + 3);
      a0 = _mm256_fmadd_ps(x, v0, a0); a1 = _mm256_fmadd_ps(x, v1, a1);
      b0 = _mm256_fmadd_ps(y, v0, b0); b1 = _mm256_fmadd_ps(y, v1, b1);
      c0 = _mm256_fmadd_ps(z, v0, c0); c1 = _mm256_fmadd_ps(z, v1, c1);
      e0 = _mm256_fmadd_ps(w, v0, e0); e1 = _mm256_fmadd_ps(w, v1, e1);
    }
    _mm256_storeu_ps(o0 + d, a0); _mm256_storeu_ps(o0 + d + 8, a1);
    _mm256_storeu_ps(o1 + d, b0); _mm256_storeu_ps(o1 + d + 8, b1);
    _mm256_storeu_ps(o2 + d, c0); _mm256_storeu_ps(o2 + d + 8, c1);
    _mm256_storeu_ps(o3 + d, e0); _mm256_storeu_ps(o3 + d + 8, e1);
  }
}

DOMINO_AVX2 void pv_avx2(const float* PT, const float* V, float* O, int64_t R, int64_t rp,
                         int64_t dp) {
  // rp is a multiple of 8, so 4-row groups cover every real row (padding rows have P = 0 or
  // garbage-free zeros and are never written out).
  for (int64_t r = 0; r < R; r += 4) pv_4rows_avx2(PT + r, V, O + r * dp, rp, dp);
}

// exp for x <= 0 (softmax arguments): Cody-Waite reduction, degree-6 polynomial, ~2 ulp;
// x < -87 (including -inf) gives exactly 0.
DOMINO_AVX2 inline __m256 exp_neg_avx2(__m256 v) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
  const __m256 xc = _mm256_max_ps(v, lo);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504089f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.38888889e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

DOMINO_AVX2 void softmax_avx2(float* ST, float* m, float* l, float* alpha, int64_t rp) {
  const __m256 neg_inf = _mm256_set1_ps(kNegInf), zero = _mm256_setzero_ps();
  for (int64_t r = 0; r < rp; r += 8) {
    const __m256 m_old = _mm256_loadu_ps(m + r);
    __m256 mx = m_old;
    for (int64_t j = 0; j < kKeyBlock; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(ST + j * rp + r));
    const __m256 base = _mm256_blendv_ps(mx, zero, _mm256_cmp_ps(mx, neg_inf, _CMP_EQ_OQ));
    __m256 sum = zero;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const __m256 e = exp_neg_avx2(_mm256_sub_ps(_mm256_loadu_ps(ST + j * rp + r), base));
      _mm256_storeu_ps(ST + j * rp + r, e);
      sum = _mm256_add_ps(sum, e);
    }
    const __m256 a = exp_neg_avx2(_mm256_sub_ps(m_old, base));
    _mm256_storeu_ps(alpha + r, a);
    _mm256_storeu_ps(l + r, _mm256_fmadd_ps(_mm256_loadu_ps(l + r), a, sum));
    _mm256_storeu_ps(m + r, mx);
  }
}

bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

struct Kernels {
  void (*qk)(const float*, const float*, float*, int64_t, int64_t, int64_t);
  void (*pv)(const float*, const float*, float*, int64_t, int64_t, int64_t);
  void (*softmax)(float*, float*, float*, float*, int64_t);
};

const Kernels& kernels() {
#ifdef DOMINO_ATTN_X86
  static const Kernels k = cpu_has_avx2_fma()
                               ? Kernels{qk_avx2, pv_avx2, softmax_avx2}
                               : Kernels{qk_portable, pv_portable, softmax_portable};
#else
  static const Kernels k{qk_portable, pv_portable, softmax_portable};
#endif
  return k;
}

// ---- one work item --------------------------------------------------------------------------
struct Scratch {
  std::vector<float> qt, o, m, l, alpha, st, k, v;
  std::vector<uint8_t> bad;  // per row: a visible score was NaN or +inf (finish_row)
};

template <typename T>
void convert_row(const T* src, float* dst, int64_t n) {
  for (int64_t d = 0; d < n; ++d) dst[d] = to_float(src[d]);
}

template <typename T>
void run_item(const AttentionParams& p, const CpuPlan& plan, const CpuWorkItem& it, Scratch& sc,
              float* ws_out, float* ws_lse) {
  const Kernels& kern = kernels();
  const int64_t D = p.head_dim, dp = round_up(D, 16);
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  const int64_t R = it.row_end - it.row_begin, rp = round_up(R, 8);
  const RequestSpan span = request_span(p.kv_lens, p.q_cu_lens, p.total_q, it.b);
  const PagedKV& kv = p.kv;
  sc.qt.assign(D * rp, 0.0f);
  sc.o.assign(rp * dp, 0.0f);
  sc.m.assign(rp, kNegInf);
  sc.bad.assign(rp, 0);
  sc.l.assign(rp, 0.0f);
  sc.alpha.resize(rp);
  sc.st.resize(kKeyBlock * rp);
  sc.k.assign(kKeyBlock * dp, 0.0f);
  sc.v.assign(kKeyBlock * dp, 0.0f);

  // Query rows, transposed and pre-scaled so that ST holds scaled scores.
  const T* q = static_cast<const T*>(p.q);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t rr = it.row_begin + r, i = rr / G, head = it.kv_head * G + rr % G;
    const T* src = q + (span.q_begin + i) * p.q_tok_stride + head * p.q_head_stride;
    for (int64_t d = 0; d < D; ++d) sc.qt[d * rp + r] = to_float(src[d]) * p.scale;
  }
  const T* kc = static_cast<const T*>(kv.k);
  const T* vc = static_cast<const T*>(kv.v);
  bool visible[kKeyBlock];

  for (int64_t k0 = it.key_begin; k0 < it.key_end; k0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, it.key_end - k0);
    // Gather the block's keys and values from their pages, in fp32.
    bool all_visible = true;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const int64_t pos = k0 + j;
      const int64_t page = j < nk ? page_of(kv, it.b, pos) : -1;
      visible[j] = page >= 0;
      float* krow = sc.k.data() + j * dp;
      float* vrow = sc.v.data() + j * dp;
      if (page < 0) {
        all_visible = false;
        std::fill(krow, krow + D, 0.0f);
        std::fill(vrow, vrow + D, 0.0f);
        continue;
      }
      const int64_t slot = pos % kv.page_size;
      convert_row(kc + cache_offset(page, slot, it.kv_head, kv.k_page_stride, kv.k_slot_stride,
                                    kv.k_head_stride),
                  krow, D);
      convert_row(vc + cache_offset(page, slot, it.kv_head, kv.v_page_stride, kv.v_slot_stride,
                                    kv.v_head_stride),
                  vrow, D);
    }
    kern.qk(sc.qt.data(), sc.k.data(), sc.st.data(), rp, D, dp);

    // Mask: unbacked positions, and new tokens per mode (only blocks reaching past the prefix).
    if (!all_visible || k0 + nk > span.kv_len) {
      for (int64_t j = 0; j < kKeyBlock; ++j) {
        float* st = sc.st.data() + j * rp;
        const int64_t pos = k0 + j;
        if (!visible[j]) {
          std::fill(st, st + rp, kNegInf);
        } else if (pos >= span.kv_len) {
          for (int64_t r = 0; r < R; ++r) {
            const int64_t i = (it.row_begin + r) / G;
            if (!new_token_visible(p.mask_mode, p.tree_mask, p.mask_words, span.q_begin + i, i,
                                   pos - span.kv_len))
              st[r] = kNegInf;
          }
        }
      }
    }
    for (int64_t j = 0; j < nk; ++j) {  // invisible keys hold -inf by now
      const float* st = sc.st.data() + j * rp;
      for (int64_t r = 0; r < R; ++r) sc.bad[r] |= bad_score(st[r]);
    }
    kern.softmax(sc.st.data(), sc.m.data(), sc.l.data(), sc.alpha.data(), rp);
    for (int64_t r = 0; r < R; ++r) {
      const float a = sc.alpha[r];
      if (a == 1.0f) continue;
      float* orow = sc.o.data() + r * dp;
      for (int64_t d = 0; d < dp; ++d) orow[d] *= a;
    }
    kern.pv(sc.st.data(), sc.v.data(), sc.o.data(), R, rp, dp);
  }

  // Finalise: normalised output and lse, to the output or to this split's partial slot.
  const int64_t Hq = p.num_q_heads;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t rr = it.row_begin + r, i = rr / G, head = it.kv_head * G + rr % G;
    const int64_t row = (span.q_begin + i) * Hq + head;
    const RowFinish fin = finish_row(sc.m[r], sc.l[r], sc.bad[r] != 0);
    const float inv = fin.inv, lse = fin.lse;
    const float* orow = sc.o.data() + r * dp;
    if (plan.num_splits > 1) {
      float* dst = ws_out + (it.split * p.total_q * Hq + row) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = orow[d] * inv;
      ws_lse[it.split * p.total_q * Hq + row] = lse;
    } else {
      T* dst = static_cast<T*>(p.out) + row * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(orow[d] * inv);
      if (p.lse) p.lse[row] = lse;
    }
  }
}

}  // namespace

int64_t max_attention_cpu_items(const AttentionParams& p, const CpuPlan& plan) {
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  // Row tiles never straddle requests: at most one partial tile per request.
  const int64_t tiles = (p.total_q * G + plan.row_tile - 1) / plan.row_tile + p.batch;
  return tiles * p.kv.num_kv_heads * plan.num_splits;
}

CpuPlan plan_attention_cpu(const AttentionParams& p, int64_t threads) {
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  int64_t tiles = 0, longest = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const RequestSpan s = request_span(p.kv_lens, p.q_cu_lens, p.total_q, b);
    tiles += (s.n_new * G + kRowTile - 1) / kRowTile;
    if (s.n_new > 0) longest = std::max(longest, s.kv_len + s.n_new);
  }
  // Split the keys only when there are too few (request, KV head, row tile) items to keep every
  // thread busy, and never into pieces shorter than kMinSplitKeys.
  const int64_t base = tiles * p.kv.num_kv_heads;
  CpuPlan plan;
  plan.row_tile = kRowTile;
  if (base > 0 && base < 2 * threads)
    plan.num_splits = std::max<int64_t>(
        1, std::min((2 * threads + base - 1) / base, longest / kMinSplitKeys));
  return plan;
}

int64_t fill_attention_cpu_items(const AttentionParams& p, const CpuPlan& plan,
                                 CpuWorkItem* items) {
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads, Hkv = p.kv.num_kv_heads;
  const int64_t capacity = p.kv.max_pages * p.kv.page_size;
  int64_t n = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const RequestSpan s = request_span(p.kv_lens, p.q_cu_lens, p.total_q, b);
    const int64_t rows = s.n_new * G;
    for (int64_t r0 = 0; r0 < rows; r0 += plan.row_tile) {
      const int64_t r1 = std::min(rows, r0 + plan.row_tile);
      const int64_t key_end = std::min(capacity, key_end_for_token(p.mask_mode, s, (r1 - 1) / G));
      const int64_t chunk = round_up((key_end + plan.num_splits - 1) / plan.num_splits, kKeyBlock);
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t sp = 0; sp < plan.num_splits; ++sp) {
          CpuWorkItem& it = items[n++];
          it.b = int32_t(b);
          it.kv_head = int32_t(h);
          it.row_begin = int32_t(r0);
          it.row_end = int32_t(r1);
          it.key_begin = std::min(key_end, sp * chunk);
          it.key_end = std::min(key_end, (sp + 1) * chunk);
          it.split = int32_t(sp);
        }
    }
  }
  return n;
}

void attention_cpu(const AttentionParams& p, const CpuPlan& plan, const CpuWorkItem* items,
                   int64_t begin, int64_t end, float* ws_out, float* ws_lse) {
  Scratch scratch;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = begin; i < end; ++i) run_item<T>(p, plan, items[i], scratch, ws_out, ws_lse);
  });
}

void merge_attention_cpu(const AttentionParams& p, const CpuPlan& plan, const float* ws_out,
                         const float* ws_lse, int64_t row_begin, int64_t row_end) {
  const int64_t D = p.head_dim, S = plan.num_splits, stride = p.total_q * p.num_q_heads;
  std::vector<float> acc(D);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t row = row_begin; row < row_end; ++row) {  // row = token * Hq + head
      float mx = kNegInf;
      bool nan = false;  // a split's row was undefined: so is the merged row
      for (int64_t s = 0; s < S; ++s) {
        mx = std::max(mx, ws_lse[s * stride + row]);
        nan |= std::isnan(ws_lse[s * stride + row]);
      }
      T* dst = static_cast<T*>(p.out) + row * D;
      if (nan) {
        const float q_nan = std::numeric_limits<float>::quiet_NaN();
        for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(q_nan);
        if (p.lse) p.lse[row] = q_nan;
        continue;
      }
      if (mx == kNegInf) {
        for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(0.0f);
        if (p.lse) p.lse[row] = kNegInf;
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float total = 0.0f;
      for (int64_t s = 0; s < S; ++s) {
        const float w = std::exp(ws_lse[s * stride + row] - mx);
        if (w == 0.0f) continue;
        total += w;
        const float* src = ws_out + (s * stride + row) * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * src[d];
      }
      for (int64_t d = 0; d < D; ++d) dst[d] = from_float<T>(acc[d] / total);
      if (p.lse) p.lse[row] = mx + std::log(total);
    }
  });
}

// ---- append_kv --------------------------------------------------------------------------------
void append_kv_cpu(const AppendParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t D = p.head_dim, Hkv = p.kv.num_kv_heads;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    T* kc = static_cast<T*>(p.k_cache);
    T* vc = static_cast<T*>(p.v_cache);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t b = request_of_row(p.kv_lens, p.q_cu_lens, p.batch, p.total_q, row);
      if (b < 0) continue;
      const RequestSpan s = request_span(p.kv_lens, p.q_cu_lens, p.total_q, b);
      const int64_t pos = s.kv_len + (row - s.q_begin);
      const int64_t page = page_of(p.kv, b, pos);
      if (page < 0) continue;
      const int64_t slot = pos % p.kv.page_size;
      for (int64_t h = 0; h < Hkv; ++h) {
        std::copy(k + row * p.k_tok_stride + h * p.k_head_stride,
                  k + row * p.k_tok_stride + h * p.k_head_stride + D,
                  kc + cache_offset(page, slot, h, p.kv.k_page_stride, p.kv.k_slot_stride,
                                    p.kv.k_head_stride));
        std::copy(v + row * p.v_tok_stride + h * p.v_head_stride,
                  v + row * p.v_tok_stride + h * p.v_head_stride + D,
                  vc + cache_offset(page, slot, h, p.kv.v_page_stride, p.kv.v_slot_stride,
                                    p.kv.v_head_stride));
      }
    }
  });
}

// ---- tree_info --------------------------------------------------------------------------------
void tree_info_cpu(const TreeInfoParams& p, int64_t b_begin, int64_t b_end) {
  const int64_t T = p.nodes, W = p.words;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const int64_t n = clamped_num_nodes(p, b), prefix = p.prefix_lens[b];
    int32_t* mask = p.mask + b * T * W;
    for (int64_t i = 0; i < T; ++i) {
      int32_t* row = mask + i * W;
      int32_t depth = 0;
      if (i < n) {
        const int64_t par = valid_parent(p, b, i);
        if (par >= 0) {
          for (int64_t w = 0; w < W; ++w) row[w] = mask[par * W + w];
          depth = p.depth[b * T + par] + 1;
        } else {
          for (int64_t w = 0; w < W; ++w) row[w] = 0;
        }
        row[i >> 5] = int32_t(uint32_t(row[i >> 5]) | (1u << (i & 31)));
      } else {
        for (int64_t w = 0; w < W; ++w) row[w] = 0;
      }
      p.depth[b * T + i] = depth;
      p.positions[b * T + i] = int64_t(uint64_t(prefix) + uint64_t(depth));  // wraps, never UB
    }
  }
}

}  // namespace attention
}  // namespace domino
