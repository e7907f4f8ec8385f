// Binding of domino::tree_attention, domino::append_kv and domino::tree_info: argument checks,
// output allocation, CPU/CUDA dispatch. Semantics and layouts: csrc/include/domino/attention.h.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "binding_utils.h"
#include "domino/attention.h"

#ifdef DOMINO_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace domino {
namespace binding {
namespace {

using attention::PagedKV;
using attention::RequestSpan;

constexpr int64_t kMaxHeadDim = 256;  // the CUDA kernels keep a row of this many floats per lane group

// Paged cache [num_pages, page_size, Hkv, D] with unit stride over D; fills geometry and strides.
PagedKV check_cache(const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& block_table, const char* op) {
  check_device_supported(k_cache, op, "k_cache");
  check_dim(k_cache, 4, op, "k_cache");
  float_dtype(k_cache, op, "k_cache");
  check_dim(v_cache, 4, op, "v_cache");
  DOMINO_CHECK_ARG(v_cache.sizes() == k_cache.sizes(), op, "v_cache",
                   "must have the shape of 'k_cache' ", shape_str(k_cache), ", got ",
                   shape_str(v_cache));
  DOMINO_CHECK_ARG(v_cache.scalar_type() == k_cache.scalar_type(), op, "v_cache",
                   "must have the dtype of 'k_cache' (", k_cache.scalar_type(), "), got ",
                   v_cache.scalar_type());
  check_same_device(v_cache, k_cache, op, "v_cache", "k_cache");
  DOMINO_CHECK_ARG(k_cache.stride(3) == 1, op, "k_cache", "must have unit stride over head_dim");
  DOMINO_CHECK_ARG(v_cache.stride(3) == 1, op, "v_cache", "must have unit stride over head_dim");
  DOMINO_CHECK_ARG(k_cache.size(1) > 0, op, "k_cache", "must have page_size >= 1, got shape ",
                   shape_str(k_cache));
  DOMINO_CHECK_ARG(k_cache.size(2) > 0, op, "k_cache", "must have at least one KV head, got shape ",
                   shape_str(k_cache));
  const int64_t D = k_cache.size(3);
  DOMINO_CHECK_ARG(D > 0 && D <= kMaxHeadDim, op, "k_cache", "head_dim must be in [1, ",
                   kMaxHeadDim, "], got ", D);
  check_dim(block_table, 2, op, "block_table");
  check_dtype(block_table, at::kInt, op, "block_table");
  check_same_device(block_table, k_cache, op, "block_table", "k_cache");
  check_contiguous(block_table, op, "block_table");
  PagedKV kv;
  kv.num_pages = k_cache.size(0);
  kv.page_size = k_cache.size(1);
  kv.num_kv_heads = k_cache.size(2);
  kv.k_page_stride = k_cache.stride(0);
  kv.k_slot_stride = k_cache.stride(1);
  kv.k_head_stride = k_cache.stride(2);
  kv.v_page_stride = v_cache.stride(0);
  kv.v_slot_stride = v_cache.stride(1);
  kv.v_head_stride = v_cache.stride(2);
  kv.bt_stride = block_table.size(1);
  kv.max_pages = block_table.size(1);
  kv.block_table = block_table.data_ptr<int32_t>();
  return kv;
}

// kv_lens [B], q_cu_lens [B+1] int32 on the cache's device.
void check_lengths(const at::Tensor& kv_lens, const at::Tensor& q_cu_lens, int64_t batch,
                   const at::Tensor& ref, const char* op) {
  check_vector(kv_lens, batch, at::kInt, ref, op, "kv_lens", "k_cache");
  check_vector(q_cu_lens, batch + 1, at::kInt, ref, op, "q_cu_lens", "k_cache");
}

// CPU only (values are host-readable): every value the kernels would otherwise clamp must be valid.
// Returns the largest number of new tokens of a request.
int64_t check_length_values(const PagedKV& kv, const int32_t* kv_lens, const int32_t* q_cu_lens,
                            int64_t batch, int64_t total_q, const char* op) {
  DOMINO_CHECK_ARG(q_cu_lens[0] == 0, op, "q_cu_lens", "must start at 0, got ", q_cu_lens[0]);
  for (int64_t b = 0; b < batch; ++b)  // all of q_cu_lens first: kv_lens is judged against it
    DOMINO_CHECK_ARG(q_cu_lens[b + 1] >= q_cu_lens[b], op, "q_cu_lens",
                     "must be non-decreasing, got ", q_cu_lens[b], " then ", q_cu_lens[b + 1],
                     " at request ", b);
  DOMINO_CHECK_ARG(q_cu_lens[batch] == total_q, op, "q_cu_lens",
                   "must end at the number of new tokens (", total_q, "), got ", q_cu_lens[batch]);
  const int64_t capacity = kv.max_pages * kv.page_size;
  int64_t max_new = 0;
  for (int64_t b = 0; b < batch; ++b) {
    DOMINO_CHECK_ARG(kv_lens[b] >= 0, op, "kv_lens", "must be >= 0, got ", kv_lens[b],
                     " at request ", b);
    const int64_t n = q_cu_lens[b + 1] - q_cu_lens[b], end = int64_t(kv_lens[b]) + n;
    max_new = std::max(max_new, n);
    DOMINO_CHECK_ARG(end <= capacity, op, "kv_lens",
                     "plus the new tokens exceeds the capacity of the block table (", kv.max_pages,
                     " pages x ", kv.page_size, " = ", capacity, " positions) at request ", b,
                     ": ", kv_lens[b], " + ", n);
    const int64_t pages = (end + kv.page_size - 1) / kv.page_size;
    for (int64_t i = 0; i < pages; ++i) {
      const int32_t page = kv.block_table[b * kv.bt_stride + i];
      DOMINO_CHECK_ARG(page >= 0 && page < kv.num_pages, op, "block_table",
                       "entry [", b, ", ", i, "] = ", page, " is not a page of the cache (",
                       kv.num_pages, " pages)");
    }
  }
  return max_new;
}

// ---- tree_attention ---------------------------------------------------------------------------
constexpr const char* kAttnOp = "domino::tree_attention";

std::tuple<at::Tensor, at::Tensor> tree_attention(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
    const at::Tensor& block_table, const at::Tensor& kv_lens, const at::Tensor& q_cu_lens,
    const std::optional<at::Tensor>& tree_mask, int64_t mask_mode, double scale,
    bool return_lse) {
  const char* op = kAttnOp;
  check_device_supported(q, op, "q");
  check_dim(q, 3, op, "q");
  const DType dtype = float_dtype(q, op, "q");
  PagedKV kv = check_cache(k_cache, v_cache, block_table, op);
  check_same_device(k_cache, q, op, "k_cache", "q");
  DOMINO_CHECK_ARG(k_cache.scalar_type() == q.scalar_type(), op, "k_cache",
                   "must have the dtype of 'q' (", q.scalar_type(), "), got ",
                   k_cache.scalar_type());
  DOMINO_CHECK_ARG(q.stride(2) == 1, op, "q", "must have unit stride over head_dim");
  const int64_t total_q = q.size(0), Hq = q.size(1), D = q.size(2);
  DOMINO_CHECK_ARG(D == k_cache.size(3), op, "q", "head_dim ", D,
                   " does not match the head_dim of 'k_cache' (", k_cache.size(3), ")");
  DOMINO_CHECK_ARG(Hq > 0 && Hq % kv.num_kv_heads == 0, op, "q", "number of query heads (", Hq,
                   ") must be a positive multiple of the KV heads of 'k_cache' (",
                   kv.num_kv_heads, ")");
  const int64_t batch = block_table.size(0);
  check_lengths(kv_lens, q_cu_lens, batch, k_cache, op);
  DOMINO_CHECK_ARG(mask_mode >= 0 && mask_mode <= 2, op, "mask_mode",
                   "must be 0 (causal), 1 (tree) or 2 (full), got ", mask_mode);
  DOMINO_CHECK_ARG(std::isfinite(scale) && std::fabs(scale) <= double(FLT_MAX), op, "scale",
                   "must be finite as a float32 (|scale| <= 3.4028235e38), got ", scale);
  int64_t mask_words = 0;
  if (mask_mode == attention::kTree) {
    DOMINO_CHECK_ARG(tree_mask.has_value(), op, "tree_mask", "is required when mask_mode is 1 (tree)");
    check_dim(*tree_mask, 2, op, "tree_mask");
    check_size(*tree_mask, 0, total_q, op, "tree_mask", "one row per new token");
    check_dtype(*tree_mask, at::kInt, op, "tree_mask");
    check_same_device(*tree_mask, q, op, "tree_mask", "q");
    check_contiguous(*tree_mask, op, "tree_mask");
    mask_words = tree_mask->size(1);
  }

  DOMINO_CHECK_ARG(batch > 0 || total_q == 0, op, "block_table", "has 0 rows (no request) but 'q' has ",
                   total_q, " new tokens");
  int64_t max_new = 0;
  if (q.is_cpu()) {  // values are host-readable: validate them even when there is nothing to compute
    max_new = check_length_values(kv, kv_lens.data_ptr<int32_t>(), q_cu_lens.data_ptr<int32_t>(),
                                  batch, total_q, op);
    if (mask_mode == attention::kTree)
      DOMINO_CHECK_ARG(32 * mask_words >= max_new, op, "tree_mask", "has ", mask_words,
                       " words per row, too few for a request with ", max_new,
                       " new tokens (need ", (max_new + 31) / 32, ")");
  }

  at::Tensor out = at::empty({total_q, Hq, D}, q.options());
  at::Tensor lse = return_lse ? at::empty({total_q, Hq}, q.options().dtype(at::kFloat))
                              : at::empty({0}, q.options().dtype(at::kFloat));
  if (total_q == 0) return {out, lse};

  attention::AttentionParams p;
  p.q = q.data_ptr();
  p.dtype = dtype;
  p.total_q = total_q;
  p.num_q_heads = Hq;
  p.head_dim = D;
  p.q_tok_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  kv.k = k_cache.data_ptr();
  kv.v = v_cache.data_ptr();
  p.kv = kv;
  p.batch = batch;
  p.kv_lens = kv_lens.data_ptr<int32_t>();
  p.q_cu_lens = q_cu_lens.data_ptr<int32_t>();
  p.tree_mask = mask_mode == attention::kTree ? tree_mask->data_ptr<int32_t>() : nullptr;
  p.mask_words = mask_words;
  p.mask_mode = int32_t(mask_mode);
  p.scale = float(scale);
  p.out = out.data_ptr();
  p.lse = return_lse ? lse.data_ptr<float>() : nullptr;

  if (q.is_cpu()) {
    const attention::CpuPlan plan = attention::plan_attention_cpu(p, at::get_num_threads());
    std::vector<attention::CpuWorkItem> items(attention::max_attention_cpu_items(p, plan));
    const int64_t n = attention::fill_attention_cpu_items(p, plan, items.data());
    at::Tensor ws_out, ws_lse;
    if (plan.num_splits > 1) {
      ws_out = at::empty({plan.num_splits, total_q, Hq, D}, q.options().dtype(at::kFloat));
      ws_lse = at::empty({plan.num_splits, total_q, Hq}, q.options().dtype(at::kFloat));
    }
    float* wo = plan.num_splits > 1 ? ws_out.data_ptr<float>() : nullptr;
    float* wl = plan.num_splits > 1 ? ws_lse.data_ptr<float>() : nullptr;
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      attention::attention_cpu(p, plan, items.data(), i0, i1, wo, wl);
    });
    if (plan.num_splits > 1)
      at::parallel_for(0, total_q * Hq, 64, [&](int64_t r0, int64_t r1) {
        attention::merge_attention_cpu(p, plan, wo, wl, r0, r1);
      });
    return {out, lse};
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(q.device());
  // Rows that belong to no request (malformed q_cu_lens, not read on the host) are not written by
  // the kernels: they read as "sees no key" (zeros, lse -inf) instead of uninitialised memory.
  out.zero_();
  if (return_lse) lse.fill_(-std::numeric_limits<float>::infinity());
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index());
  const int64_t splits = attention::attention_cuda_splits(p, sms);
  at::Tensor ws_out, ws_lse;
  if (splits > 1) {
    ws_out = at::empty({splits, total_q, Hq, D}, q.options().dtype(at::kFloat));
    ws_lse = at::empty({splits, total_q, Hq}, q.options().dtype(at::kFloat));
  }
  check_cuda_status(attention::attention_cuda(p, splits,
                                              splits > 1 ? ws_out.data_ptr<float>() : nullptr,
                                              splits > 1 ? ws_lse.data_ptr<float>() : nullptr,
                                              current_stream(q)),
                    op);
#endif
  return {out, lse};
}

// ---- append_kv --------------------------------------------------------------------------------
constexpr const char* kAppendOp = "domino::append_kv";

void append_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
               const at::Tensor& v_cache, const at::Tensor& block_table, const at::Tensor& kv_lens,
               const at::Tensor& q_cu_lens) {
  const char* op = kAppendOp;
  PagedKV kv = check_cache(k_cache, v_cache, block_table, op);
  check_dim(k, 3, op, "k");
  check_dim(v, 3, op, "v");
  const DType dtype = float_dtype(k_cache, op, "k_cache");
  DOMINO_CHECK_ARG(k.scalar_type() == k_cache.scalar_type(), op, "k",
                   "must have the dtype of 'k_cache' (", k_cache.scalar_type(), "), got ",
                   k.scalar_type());
  DOMINO_CHECK_ARG(v.scalar_type() == k_cache.scalar_type(), op, "v",
                   "must have the dtype of 'k_cache' (", k_cache.scalar_type(), "), got ",
                   v.scalar_type());
  check_same_device(k, k_cache, op, "k", "k_cache");
  check_same_device(v, k_cache, op, "v", "k_cache");
  check_size(k, 1, kv.num_kv_heads, op, "k", "KV heads of 'k_cache'");
  check_size(k, 2, k_cache.size(3), op, "k", "head_dim of 'k_cache'");
  DOMINO_CHECK_ARG(v.sizes() == k.sizes(), op, "v", "must have the shape of 'k' ", shape_str(k),
                   ", got ", shape_str(v));
  DOMINO_CHECK_ARG(k.stride(2) == 1, op, "k", "must have unit stride over head_dim");
  DOMINO_CHECK_ARG(v.stride(2) == 1, op, "v", "must have unit stride over head_dim");
  const int64_t batch = block_table.size(0), total_q = k.size(0);
  check_lengths(kv_lens, q_cu_lens, batch, k_cache, op);
  DOMINO_CHECK_ARG(batch > 0 || total_q == 0, op, "block_table", "has 0 rows (no request) but 'k' has ",
                   total_q, " new tokens");
  if (k.is_cpu())  // values are host-readable: validate them even when there is nothing to write
    check_length_values(kv, kv_lens.data_ptr<int32_t>(), q_cu_lens.data_ptr<int32_t>(), batch,
                        total_q, op);
  if (total_q == 0) return;

  attention::AppendParams p;
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_tok_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.v_tok_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.dtype = dtype;
  p.total_q = total_q;
  p.head_dim = k.size(2);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.kv = kv;
  p.batch = batch;
  p.kv_lens = kv_lens.data_ptr<int32_t>();
  p.q_cu_lens = q_cu_lens.data_ptr<int32_t>();
  if (k.is_cpu()) {
    at::parallel_for(0, total_q, 16, [&](int64_t r0, int64_t r1) {
      attention::append_kv_cpu(p, r0, r1);
    });
    return;
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(k.device());
  check_cuda_status(attention::append_kv_cuda(p, current_stream(k)), op);
#endif
}

// ---- tree_info --------------------------------------------------------------------------------
constexpr const char* kTreeOp = "domino::tree_info";

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_info(const at::Tensor& parents,
                                                         const at::Tensor& num_nodes,
                                                         const at::Tensor& prefix_lens) {
  const char* op = kTreeOp;
  check_device_supported(parents, op, "parents");
  check_dim(parents, 2, op, "parents");
  check_dtype(parents, at::kLong, op, "parents");
  check_contiguous(parents, op, "parents");
  const int64_t batch = parents.size(0), T = parents.size(1), W = (T + 31) / 32;
  check_vector(num_nodes, batch, at::kLong, parents, op, "num_nodes", "parents");
  check_vector(prefix_lens, batch, at::kLong, parents, op, "prefix_lens", "parents");
  DOMINO_CHECK_ARG(T < INT32_MAX, op, "parents", "must have fewer than 2^31 - 1 nodes, got shape ",
                   shape_str(parents));
  if (parents.is_cpu()) {  // values are host-readable: validate them before any early return
    const int64_t* par_v = parents.data_ptr<int64_t>();
    const int64_t* nn_v = num_nodes.data_ptr<int64_t>();
    const int64_t* pre_v = prefix_lens.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t n = nn_v[b];
      DOMINO_CHECK_ARG(n >= 0 && n <= T, op, "num_nodes", "must be in [0, ", T, "] (T, from 'parents'), got ",
                       n, " at request ", b);
      DOMINO_CHECK_ARG(pre_v[b] >= 0 && pre_v[b] <= INT32_MAX - T, op, "prefix_lens", "must be in [0, 2^31 - 1 - T] = [0, ",
                       INT32_MAX - T, "] (positions are int32 lengths for the attention ops), got ",
                       pre_v[b], " at request ", b);
      if (n > 0)
        DOMINO_CHECK_ARG(par_v[b * T] == -1, op, "parents",
                         "must have -1 (root) at node 0, got ", par_v[b * T], " at request ", b);
      for (int64_t i = 1; i < n; ++i) {
        const int64_t par = par_v[b * T + i];
        DOMINO_CHECK_ARG(par >= 0 && par < i, op, "parents", "entry [", b, ", ", i, "] = ", par,
                         " must be in [0, ", i, ") (parents precede their children)");
      }
    }
  }
  at::Tensor mask = at::empty({batch, T, W}, parents.options().dtype(at::kInt));
  at::Tensor depth = at::empty({batch, T}, parents.options().dtype(at::kInt));
  at::Tensor positions = at::empty({batch, T}, parents.options());
  if (batch == 0 || T == 0) return {mask, depth, positions};

  attention::TreeInfoParams p;
  p.parents = parents.data_ptr<int64_t>();
  p.num_nodes = num_nodes.data_ptr<int64_t>();
  p.prefix_lens = prefix_lens.data_ptr<int64_t>();
  p.batch = batch;
  p.nodes = T;
  p.words = W;
  p.mask = mask.data_ptr<int32_t>();
  p.depth = depth.data_ptr<int32_t>();
  p.positions = positions.data_ptr<int64_t>();
  if (parents.is_cpu()) {
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      attention::tree_info_cpu(p, b0, b1);
    });
    return {mask, depth, positions};
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(parents.device());
  check_cuda_status(attention::tree_info_cuda(p, current_stream(parents)), op);
#endif
  return {mask, depth, positions};
}

}  // namespace

DOMINO_IMPL_ALL_KEYS(m.impl("tree_attention", &tree_attention); m.impl("append_kv", &append_kv);
                     m.impl("tree_info", &tree_info);)

}  // namespace binding
}  // namespace domino
