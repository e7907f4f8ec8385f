// domino/attention.h: attention of a ragged batch of new tokens over a paged KV cache with a
// causal, tree or full mask over the new tokens; appending K/V into the paged cache; turning a
// parent array into packed ancestor masks. This header is the contract; the executable spec is
// domino_kernels/reference/attention.py.
//
// Layouts (B requests, Hq query heads, Hkv KV heads, G = Hq / Hkv, head dim D):
//   q          [total_q, Hq, D]    new tokens of every request, request b owns rows
//                                  [q_cu_lens[b], q_cu_lens[b+1]) (n_b = its new-token count)
//   k/v cache  [num_pages, page_size, Hkv, D] (strided over the first three dims, D unit stride)
//   block_table[B, max_pages] int32: logical position pos of request b lives in page
//              block_table[b, pos / page_size], slot pos % page_size
//   kv_lens    [B] int32: committed prefix length of request b, EXCLUDING its new tokens. New token
//              i of request b has its K/V at logical position kv_lens[b] + i (append_kv wrote it).
//   tree_mask  [total_q, W] int32 (tree mode only): bit j % 32 of word j / 32 of row
//              q_cu_lens[b] + i says whether new token i sees new token j.
// Query head h uses KV head h / G. Query row (token i, head h) attends to every prefix position
// [0, kv_lens[b]) and to the new tokens j its mode allows: causal j <= i, tree bit j, full all j.
// out = softmax(scale * q k^T) v over the visible keys, accumulated in fp32 and written in q's
// dtype; lse = natural-log log-sum-exp of the visible scaled scores. A row that sees no key gets
// out = 0 and lse = -inf.
//
// Numerics at the edges (CPU and CUDA alike): scale is an fp32 value (the binding rejects a scale
// whose fp32 rounding is not finite), and the scaled scores are fp32. A row with a visible scaled
// score that is NaN or +inf (a NaN/inf in q or in a visible K row, or a product that overflows
// fp32) gets out = NaN and lse = NaN: the softmax is undefined there and says so. A score of -inf
// weighs exp(-inf) = 0, like an invisible key.
//
// Defined results for bad values read from device memory (the CPU binding raises on all of these
// instead; the CUDA kernels never read or write out of bounds):
//   * q_cu_lens entries are clamped to [0, total_q] and a request whose end precedes its begin has
//     no new tokens; negative kv_lens count as 0.
//   * a logical position at or beyond max_pages * page_size, or whose block-table entry is not in
//     [0, num_pages), is invisible to attention (contributes nothing) and is not written by
//     append_kv.
//   * in tree mode, new tokens j >= 32 * W are invisible.
#pragma once

#include "domino/common.h"
#include "domino/numerics.h"

namespace domino {
namespace attention {

enum MaskMode : int32_t { kCausal = 0, kTree = 1, kFull = 2 };

// The paged K/V cache of one layer. k and v share page_size / num_pages / the block table but may
// have different strides (e.g. both are views into one [num_pages, 2, page_size, Hkv, D] buffer).
struct PagedKV {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t num_pages = 0;
  int64_t page_size = 0;
  int64_t num_kv_heads = 0;
  int64_t k_page_stride = 0, k_slot_stride = 0, k_head_stride = 0;  // elements
  int64_t v_page_stride = 0, v_slot_stride = 0, v_head_stride = 0;
  const int32_t* block_table = nullptr;  // [batch, max_pages], row stride bt_stride
  int64_t bt_stride = 0;
  int64_t max_pages = 0;
};

struct AttentionParams {
  const void* q = nullptr;  // [total_q, Hq, D], strides q_tok_stride / q_head_stride, D unit
  DType dtype = DType::F32;  // of q, k, v and out
  int64_t total_q = 0;
  int64_t num_q_heads = 0;
  int64_t head_dim = 0;
  int64_t q_tok_stride = 0, q_head_stride = 0;
  PagedKV kv;
  int64_t batch = 0;
  const int32_t* kv_lens = nullptr;    // [batch]
  const int32_t* q_cu_lens = nullptr;  // [batch + 1]
  const int32_t* tree_mask = nullptr;  // [total_q, mask_words] (tree mode)
  int64_t mask_words = 0;
  int32_t mask_mode = kCausal;
  float scale = 1.0f;
  void* out = nullptr;   // [total_q, Hq, D] contiguous, dtype
  float* lse = nullptr;  // [total_q, Hq] contiguous, or null
};

// Row range and key counts of one request, with the clamps documented above applied.
struct RequestSpan {
  int64_t q_begin;  // first row of q
  int64_t n_new;    // new tokens
  int64_t kv_len;   // committed prefix
};

DOMINO_HD RequestSpan request_span(const int32_t* kv_lens, const int32_t* q_cu_lens,
                                   int64_t total_q, int64_t b) {
  int64_t lo = q_cu_lens[b], hi = q_cu_lens[b + 1];
  lo = lo < 0 ? 0 : (lo > total_q ? total_q : lo);
  hi = hi < 0 ? 0 : (hi > total_q ? total_q : hi);
  const int64_t kv = kv_lens[b];
  return RequestSpan{lo, hi > lo ? hi - lo : 0, kv > 0 ? kv : 0};
}

// A visible scaled score that makes its row undefined (NaN, or +inf: see the contract above).
DOMINO_HD bool bad_score(float s) { return !(s < det::kInf); }

// Normalisation of a finished softmax row with running max m, sum l of exp(s - m) and `bad` (a
// visible score was bad_score): out = o * inv, lse as documented above.
struct RowFinish {
  float inv;
  float lse;
};
DOMINO_HD RowFinish finish_row(float m, float l, bool bad) {
  if (bad || det::is_nan(m) || det::is_nan(l)) {
    const float nan = bits_to_float(0x7fc00000u);
    return RowFinish{nan, nan};
  }
  if (l > 0.0f) return RowFinish{1.0f / l, m + logf(l)};
  return RowFinish{0.0f, -det::kInf};
}

// Physical page of logical position `pos` of request b, or -1 if the position is not backed by a
// valid page (past the block table, or an entry outside [0, num_pages)).
DOMINO_HD int64_t page_of(const PagedKV& kv, int64_t b, int64_t pos) {
  const int64_t slot_page = pos / kv.page_size;
  if (pos < 0 || slot_page >= kv.max_pages) return -1;
  const int64_t page = kv.block_table[b * kv.bt_stride + slot_page];
  return (page >= 0 && page < kv.num_pages) ? page : -1;
}

// Element offset of (page, slot, head) in a cache with the given strides.
DOMINO_HD int64_t cache_offset(int64_t page, int64_t slot, int64_t head, int64_t page_stride,
                               int64_t slot_stride, int64_t head_stride) {
  return page * page_stride + slot * slot_stride + head * head_stride;
}

// Does new token i (query row `row` of q) see new token j of the same request?
DOMINO_HD bool new_token_visible(int32_t mode, const int32_t* tree_mask, int64_t mask_words,
                                 int64_t row, int64_t i, int64_t j) {
  if (mode == kCausal) return j <= i;
  if (mode == kFull) return true;
  if (j >= 32 * mask_words) return false;
  const uint32_t word = uint32_t(tree_mask[row * mask_words + (j >> 5)]);
  return (word >> (j & 31)) & 1u;
}

// Keys a query row can possibly see: [0, kv_len + last_visible_new + 1). Causal rows stop at
// themselves, the other modes may look at every new token.
DOMINO_HD int64_t key_end_for_token(int32_t mode, const RequestSpan& s, int64_t i) {
  return mode == kCausal ? s.kv_len + i + 1 : s.kv_len + s.n_new;
}

// The request owning global new-token row `row`, or -1 when no request's span contains it (only
// possible with malformed q_cu_lens). Binary search assumes non-decreasing q_cu_lens; the final
// check keeps the answer correct (or -1) whatever the values are.
DOMINO_HD int64_t request_of_row(const int32_t* kv_lens, const int32_t* q_cu_lens, int64_t batch,
                                 int64_t total_q, int64_t row) {
  int64_t lo = 0, hi = batch - 1;
  while (lo < hi) {  // last b with q_cu_lens[b] <= row
    const int64_t mid = (lo + hi + 1) / 2;
    if (q_cu_lens[mid] <= row) lo = mid; else hi = mid - 1;
  }
  if (batch <= 0) return -1;
  const RequestSpan s = request_span(kv_lens, q_cu_lens, total_q, lo);
  return (row >= s.q_begin && row < s.q_begin + s.n_new) ? lo : -1;
}

// ---- append_kv ----------------------------------------------------------------------------------
struct AppendParams {
  const void* k = nullptr;  // [total_q, Hkv, D], strides k_tok_stride / k_head_stride
  const void* v = nullptr;
  int64_t k_tok_stride = 0, k_head_stride = 0, v_tok_stride = 0, v_head_stride = 0;
  DType dtype = DType::F32;
  int64_t total_q = 0;
  int64_t head_dim = 0;
  void* k_cache = nullptr;  // same layout as PagedKV (writable)
  void* v_cache = nullptr;
  PagedKV kv;  // k/v pointers unused; geometry, strides and block table
  int64_t batch = 0;
  const int32_t* kv_lens = nullptr;
  const int32_t* q_cu_lens = nullptr;
};

// ---- tree_info ----------------------------------------------------------------------------------
// parents [B, T] int64 (parents[b, 0] = -1, 0 <= parents[b, i] < i), num_nodes [B], prefix_lens [B]
// -> mask [B, T, W] int32 (ancestor-or-self bits), depth [B, T] int32, positions [B, T] int64.
// Nodes i >= num_nodes[b] (num_nodes clamped to [0, T]) get mask 0, depth 0, position prefix_len.
// A node whose parent is not in [0, i) (the CPU binding raises; on CUDA this is the defined
// result) is treated as a root: only its own bit, depth 0.
struct TreeInfoParams {
  const int64_t* parents = nullptr;
  const int64_t* num_nodes = nullptr;
  const int64_t* prefix_lens = nullptr;
  int64_t batch = 0;
  int64_t nodes = 0;  // T
  int64_t words = 0;  // W = ceil(T / 32)
  int32_t* mask = nullptr;
  int32_t* depth = nullptr;
  int64_t* positions = nullptr;
};

DOMINO_HD int64_t valid_parent(const TreeInfoParams& p, int64_t b, int64_t i) {
  const int64_t par = p.parents[b * p.nodes + i];
  return (i > 0 && par >= 0 && par < i) ? par : -1;
}

DOMINO_HD int64_t clamped_num_nodes(const TreeInfoParams& p, int64_t b) {
  const int64_t n = p.num_nodes[b];
  return n < 0 ? 0 : (n > p.nodes ? p.nodes : n);
}

// ---- launchers ----------------------------------------------------------------------------------

// CPU attention is planned on the host (lengths are host-readable there) as a list of independent
// work items; each covers a tile of query rows of one (request, KV head) and a range of keys.
// Rows of a request are numbered r = i * G + g (token-major), g the head within the KV group.
struct CpuWorkItem {
  int32_t b, kv_head;
  int32_t row_begin, row_end;  // in the request's [0, n_new * G) row space
  int64_t key_begin, key_end;  // logical positions
  int32_t split;               // index of this key range among the row tile's splits
};

struct CpuPlan {
  int64_t num_splits = 1;  // > 1: items write partial (out, lse) to the workspace, then merge
  int64_t row_tile = 64;
};

// Chooses the split count (threads = pool size to fill) and bounds the number of work items.
CpuPlan plan_attention_cpu(const AttentionParams& p, int64_t threads);
int64_t max_attention_cpu_items(const AttentionParams& p, const CpuPlan& plan);
// Writes the work items (at most max_attention_cpu_items) and returns how many there are.
int64_t fill_attention_cpu_items(const AttentionParams& p, const CpuPlan& plan,
                                 CpuWorkItem* items);
// Runs items [begin, end). With plan.num_splits > 1, partial results go to ws_out
// [num_splits, total_q, Hq, D] and ws_lse [num_splits, total_q, Hq] (fp32), and
// merge_attention_cpu must run afterwards over every (token, head) row.
void attention_cpu(const AttentionParams& p, const CpuPlan& plan, const CpuWorkItem* items,
                   int64_t begin, int64_t end, float* ws_out, float* ws_lse);
void merge_attention_cpu(const AttentionParams& p, const CpuPlan& plan, const float* ws_out,
                         const float* ws_lse, int64_t row_begin, int64_t row_end);

// Rows [row_begin, row_end) of k/v (global new-token rows).
void append_kv_cpu(const AppendParams& p, int64_t row_begin, int64_t row_end);
// Requests [b_begin, b_end).
void tree_info_cpu(const TreeInfoParams& p, int64_t b_begin, int64_t b_end);

#if defined(DOMINO_WITH_CUDA) || defined(__CUDACC__)
// Scratch the CUDA attention needs for `num_splits` > 1: fp32 [num_splits, total_q, Hq, D] and
// [num_splits, total_q, Hq]. attention_cuda_splits picks the split count from the geometry alone
// (no device values are read on the host).
int64_t attention_cuda_splits(const AttentionParams& p, int num_sms);
int attention_cuda(const AttentionParams& p, int64_t num_splits, float* ws_out, float* ws_lse,
                   void* stream);
int append_kv_cuda(const AppendParams& p, void* stream);
int tree_info_cuda(const TreeInfoParams& p, void* stream);
#endif

}  // namespace attention
}  // namespace domino
