// CPU implementation of domino::attention (semantics in domino/attention.h).
//
// Work item = a tile of up to 64 query rows (all group heads x consecutive new tokens) of one
// (request, KV head), over a range of key positions. Each 32-key block of the prefix is gathered
// from its pages and converted to fp32 once, then used by every row of the tile: S = Q K^T with a
// register-tiled micro-kernel, online softmax (fp32, running max and sum), O += P V. The mask is
// evaluated only on blocks that contain new tokens. Long prefixes with few rows are split over
// several items whose partial (out, lse) are merged afterwards, so small batches still use every
// thread. Micro-kernels have an AVX2+FMA version picked at run time and a portable one.
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

constexpr int64_t kKeyBlock = 32;     // keys per block (one K^T / V block in L1)
constexpr int64_t kRowTile = 64;      // query rows per work item
constexpr int64_t kMinSplitKeys = 512;  // a split covers at least this many keys
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- micro-kernels --------------------------------------------------------------------------
// S[r][0:kKeyBlock] = sum_d Q[r][d] * KT[d][0:kKeyBlock] for rows [0, R); Q row stride dp.
void qk_portable(const float* Q, const float* KT, float* S, int64_t R, int64_t D, int64_t dp) {
  for (int64_t r = 0; r < R; ++r) {
    float acc[kKeyBlock] = {};
    const float* q = Q + r * dp;
    for (int64_t d = 0; d < D; ++d) {
      const float qd = q[d];
      const float* kt = KT + d * kKeyBlock;
      for (int64_t j = 0; j < kKeyBlock; ++j) acc[j] += qd * kt[j];
    }
    std::copy(acc, acc + kKeyBlock, S + r * kKeyBlock);
  }
}

// O[r][0:dp] += sum_j P[r][j] * V[j][0:dp] for rows [0, R).
void pv_portable(const float* P, const float* V, float* O, int64_t R, int64_t dp) {
  for (int64_t r = 0; r < R; ++r) {
    float* o = O + r * dp;
    const float* pr = P + r * kKeyBlock;
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const float pj = pr[j];
      if (pj == 0.0f) continue;
      const float* v = V + j * dp;
      for (int64_t d = 0; d < dp; ++d) o[d] += pj * v[d];
    }
  }
}

void exp_portable(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

#ifdef DOMINO_ATTN_X86
#define DOMINO_AVX2 __attribute__((target("avx2,fma")))

template <int NR>
DOMINO_AVX2 inline void qk_rows_avx2(const float* Q, const float* KT, float* S, int64_t D,
                                     int64_t dp) {
  static_assert(kKeyBlock == 32, "tile assumes 32 keys = 4 ymm");
  __m256 acc[NR][4];
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const float* kt = KT + d * kKeyBlock;
    const __m256 k0 = _mm256_loadu_ps(kt), k1 = _mm256_loadu_ps(kt + 8),
                 k2 = _mm256_loadu_ps(kt + 16), k3 = _mm256_loadu_ps(kt + 24);
    for (int r = 0; r < NR; ++r) {
      const __m256 q = _mm256_broadcast_ss(Q + r * dp + d);
      acc[r][0] = _mm256_fmadd_ps(q, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(q, k1, acc[r][1]);
      acc[r][2] = _mm256_fmadd_ps(q, k2, acc[r][2]);
      acc[r][3] = _mm256_fmadd_ps(q, k3, acc[r][3]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(S + r * kKeyBlock + 8 * c, acc[r][c]);
}

DOMINO_AVX2 void qk_avx2(const float* Q, const float* KT, float* S, int64_t R, int64_t D,
                         int64_t dp) {
  int64_t r = 0;
  for (; r + 3 <= R; r += 3) qk_rows_avx2<3>(Q + r * dp, KT, S + r * kKeyBlock, D, dp);
  for (; r < R; ++r) qk_rows_avx2<1>(Q + r * dp, KT, S + r * kKeyBlock, D, dp);
}

// dp is a multiple of 16: each step updates a 4-row x 16-column tile of O over the 32 keys.
template <int NR>
DOMINO_AVX2 inline void pv_rows_avx2(const float* P, const float* V, float* O, int64_t dp) {
  for (int64_t d = 0; d < dp; d += 16) {
    __m256 acc[NR][2];
    for (int r = 0; r < NR; ++r) {
      acc[r][0] = _mm256_loadu_ps(O + r * dp + d);
      acc[r][1] = _mm256_loadu_ps(O + r * dp + d + 8);
    }
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const __m256 v0 = _mm256_loadu_ps(V + j * dp + d), v1 = _mm256_loadu_ps(V + j * dp + d + 8);
      for (int r = 0; r < NR; ++r) {
        const __m256 p = _mm256_broadcast_ss(P + r * kKeyBlock + j);
        acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      _mm256_storeu_ps(O + r * dp + d, acc[r][0]);
      _mm256_storeu_ps(O + r * dp + d + 8, acc[r][1]);
    }
  }
}

DOMINO_AVX2 void pv_avx2(const float* P, const float* V, float* O, int64_t R, int64_t dp) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) pv_rows_avx2<4>(P + r * kKeyBlock, V, O + r * dp, dp);
  for (; r < R; ++r) pv_rows_avx2<1>(P + r * kKeyBlock, V, O + r * dp, dp);
}

// exp for x <= 0 (softmax arguments): Cody-Waite reduction, degree-6 polynomial, ~2 ulp;
// x < -87 (including -inf) gives exactly 0.
DOMINO_AVX2 void exp_avx2(float* x, int64_t n) {
  const __m256 lo = _mm256_set1_ps(-87.0f), log2e = _mm256_set1_ps(1.44269504089f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693145751953125f),
               ln2_lo = _mm256_set1_ps(1.428606765330187e-06f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
    const __m256 xc = _mm256_max_ps(v, lo);
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(xc, log2e),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, ln2_hi, xc);
    r = _mm256_fnmadd_ps(k, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.38888889e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k),
                                                         _mm256_set1_epi32(127)), 23);
    const __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    _mm256_storeu_ps(x + i, _mm256_andnot_ps(under, res));
  }
  for (; i < n; ++i) x[i] = x[i] < -87.0f ? 0.0f : std::exp(x[i]);
}

bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

struct Kernels {
  void (*qk)(const float*, const float*, float*, int64_t, int64_t, int64_t);
  void (*pv)(const float*, const float*, float*, int64_t, int64_t);
  void (*exp)(float*, int64_t);
};

const Kernels& kernels() {
#ifdef DOMINO_ATTN_X86
  static const Kernels k = cpu_has_avx2_fma() ? Kernels{qk_avx2, pv_avx2, exp_avx2}
                                              : Kernels{qk_portable, pv_portable, exp_portable};
#else
  static const Kernels k{qk_portable, pv_portable, exp_portable};
#endif
  return k;
}

// ---- one work item --------------------------------------------------------------------------
struct Scratch {
  std::vector<float> q, o, m, l, s, kt, v;
};

template <typename T>
void run_item(const AttentionParams& p, const CpuPlan& plan, const CpuWorkItem& it, Scratch& sc,
              float* ws_out, float* ws_lse) {
  const Kernels& kern = kernels();
  const int64_t D = p.head_dim, dp = round_up(D, 16);
  const int64_t G = p.num_q_heads / p.kv.num_kv_heads;
  const int64_t R = it.row_end - it.row_begin;
  const RequestSpan span = request_span(p.kv_lens, p.q_cu_lens, p.total_q, it.b);
  const PagedKV& kv = p.kv;
  sc.q.assign(R * dp, 0.0f);
  sc.o.assign(R * dp, 0.0f);
  sc.m.assign(R, kNegInf);
  sc.l.assign(R, 0.0f);
  sc.s.resize(R * kKeyBlock);
  sc.kt.resize(D * kKeyBlock);
  sc.v.assign(kKeyBlock * dp, 0.0f);

  // Query rows, pre-scaled so S holds scaled scores.
  const T* q = static_cast<const T*>(p.q);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t rr = it.row_begin + r, i = rr / G, head = it.kv_head * G + rr % G;
    const T* src = q + (span.q_begin + i) * p.q_tok_stride + head * p.q_head_stride;
    for (int64_t d = 0; d < D; ++d) sc.q[r * dp + d] = to_float(src[d]) * p.scale;
  }
  const T* kc = static_cast<const T*>(kv.k);
  const T* vc = static_cast<const T*>(kv.v);
  bool visible[kKeyBlock];

  for (int64_t k0 = it.key_begin; k0 < it.key_end; k0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, it.key_end - k0);
    // Gather the block's keys (transposed) and values from their pages, in fp32.
    for (int64_t j = 0; j < kKeyBlock; ++j) {
      const int64_t pos = k0 + j;
      const int64_t page = j < nk ? page_of(kv, it.b, pos) : -1;
      visible[j] = page >= 0;
      float* vrow = sc.v.data() + j * dp;
      if (page < 0) {
        for (int64_t d = 0; d < D; ++d) sc.kt[d * kKeyBlock + j] = 0.0f;
        for (int64_t d = 0; d < D; ++d) vrow[d] = 0.0f;
        continue;
      }
      const int64_t slot = pos % kv.page_size;
      const T* ks = kc + cache_offset(page, slot, it.kv_head, kv.k_page_stride, kv.k_slot_stride,
                                      kv.k_head_stride);
      const T* vs = vc + cache_offset(page, slot, it.kv_head, kv.v_page_stride, kv.v_slot_stride,
                                      kv.v_head_stride);
      for (int64_t d = 0; d < D; ++d) sc.kt[d * kKeyBlock + j] = to_float(ks[d]);
      for (int64_t d = 0; d < D; ++d) vrow[d] = to_float(vs[d]);
    }
    kern.qk(sc.q.data(), sc.kt.data(), sc.s.data(), R, D, dp);

    // Mask: invisible keys, and new tokens per mode (only blocks reaching past the prefix).
    const bool has_new = k0 + nk > span.kv_len;
    for (int64_t r = 0; r < R; ++r) {
      float* srow = sc.s.data() + r * kKeyBlock;
      const int64_t i = (it.row_begin + r) / G, qrow = span.q_begin + i;
      for (int64_t j = 0; j < kKeyBlock; ++j) {
        bool vis = visible[j];
        const int64_t pos = k0 + j;
        if (vis && has_new && pos >= span.kv_len)
          vis = new_token_visible(p.mask_mode, p.tree_mask, p.mask_words, qrow, i,
                                  pos - span.kv_len);
        if (!vis) srow[j] = kNegInf;
      }
      // Online softmax update of this row.
      float mx = kNegInf;
      for (int64_t j = 0; j < kKeyBlock; ++j) mx = std::max(mx, srow[j]);
      const float m_old = sc.m[r], m_new = std::max(m_old, mx);
      if (m_new == kNegInf) {  // nothing visible yet: P = 0
        std::fill(srow, srow + kKeyBlock, 0.0f);
        continue;
      }
      for (int64_t j = 0; j < kKeyBlock; ++j) srow[j] -= m_new;
      kern.exp(srow, kKeyBlock);
      float sum = 0.0f;
      for (int64_t j = 0; j < kKeyBlock; ++j) sum += srow[j];
      if (m_new != m_old) {
        const float alpha = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
        float* orow = sc.o.data() + r * dp;
        for (int64_t d = 0; d < dp; ++d) orow[d] *= alpha;
        sc.l[r] *= alpha;
      }
      sc.l[r] += sum;
      sc.m[r] = m_new;
    }
    kern.pv(sc.s.data(), sc.v.data(), sc.o.data(), R, dp);
  }

  // Finalise: normalised output and lse, to the output or to this split's partial slot.
  const int64_t Hq = p.num_q_heads;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t rr = it.row_begin + r, i = rr / G, head = it.kv_head * G + rr % G;
    const int64_t row = (span.q_begin + i) * Hq + head;
    const float l = sc.l[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float lse = l > 0.0f ? sc.m[r] + std::log(l) : kNegInf;
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
      for (int64_t s = 0; s < S; ++s) mx = std::max(mx, ws_lse[s * stride + row]);
      T* dst = static_cast<T*>(p.out) + row * D;
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
      p.positions[b * T + i] = prefix + depth;
    }
  }
}

}  // namespace attention
}  // namespace domino
