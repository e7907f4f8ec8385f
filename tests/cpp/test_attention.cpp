// Framework-free tests of domino/attention.h on the CPU: tree_info on a fixed tree, and the
// planned + split + merged attention against a naive double-precision loop in every mask mode,
// including the defined result for a block-table entry outside the cache (position invisible).
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "domino/attention.h"

using namespace domino;
using namespace domino::attention;

static void test_tree_info() {
  // 0 -> {1, 2}, 1 -> {3}, 3 -> {4}; node 5 is past num_nodes.
  const int64_t T = 6;
  std::vector<int64_t> parents = {-1, 0, 0, 1, 3, 0}, num_nodes = {5}, prefix = {10};
  std::vector<int32_t> mask(T), depth(T);
  std::vector<int64_t> pos(T);
  TreeInfoParams p;
  p.parents = parents.data();
  p.num_nodes = num_nodes.data();
  p.prefix_lens = prefix.data();
  p.batch = 1;
  p.nodes = T;
  p.words = 1;
  p.mask = mask.data();
  p.depth = depth.data();
  p.positions = pos.data();
  tree_info_cpu(p, 0, 1);
  const int32_t want_mask[] = {0b1, 0b11, 0b101, 0b1011, 0b11011, 0};
  const int32_t want_depth[] = {0, 1, 1, 2, 3, 0};
  for (int64_t i = 0; i < T; ++i) {
    CHECK(mask[i] == want_mask[i]);
    CHECK(depth[i] == want_depth[i]);
    CHECK(pos[i] == 10 + want_depth[i]);
  }
}

static void test_attention(int32_t mode) {
  const int64_t B = 2, Hq = 4, Hkv = 2, D = 24, page = 16, max_pages = 80, num_pages = 2 * max_pages;
  const std::vector<int32_t> kv_lens = {1100, 0}, q_cu = {0, 5, 8};  // 1100: long enough to split
  const int64_t total_q = 8, G = Hq / Hkv;
  std::mt19937 rng(1234 + mode);
  std::normal_distribution<float> nd;
  std::vector<float> q(total_q * Hq * D), kc(num_pages * page * Hkv * D), vc(kc.size());
  for (auto& x : q) x = nd(rng);
  for (auto& x : kc) x = nd(rng);
  for (auto& x : vc) x = nd(rng);
  std::vector<int32_t> table(B * max_pages);
  for (int64_t i = 0; i < B * max_pages; ++i) table[i] = int32_t((i * 37) % num_pages);
  table[3] = int32_t(num_pages + 5);  // request 0, positions 48..63: not backed -> invisible
  std::vector<int32_t> tree(total_q);  // random ancestor-like bits, diagonal always set
  for (int64_t r = 0; r < total_q; ++r) tree[r] = int32_t((rng() & 0xff) | (1u << (r < 5 ? r : r - 5)));

  AttentionParams p;
  p.q = q.data();
  p.dtype = DType::F32;
  p.total_q = total_q;
  p.num_q_heads = Hq;
  p.head_dim = D;
  p.q_tok_stride = Hq * D;
  p.q_head_stride = D;
  p.kv.k = kc.data();
  p.kv.v = vc.data();
  p.kv.num_pages = num_pages;
  p.kv.page_size = page;
  p.kv.num_kv_heads = Hkv;
  p.kv.k_page_stride = p.kv.v_page_stride = page * Hkv * D;
  p.kv.k_slot_stride = p.kv.v_slot_stride = Hkv * D;
  p.kv.k_head_stride = p.kv.v_head_stride = D;
  p.kv.block_table = table.data();
  p.kv.bt_stride = max_pages;
  p.kv.max_pages = max_pages;
  p.batch = B;
  p.kv_lens = kv_lens.data();
  p.q_cu_lens = q_cu.data();
  p.tree_mask = tree.data();
  p.mask_words = 1;
  p.mask_mode = mode;
  p.scale = 0.3f;
  std::vector<float> out(total_q * Hq * D), lse(total_q * Hq);
  p.out = out.data();
  p.lse = lse.data();

  const CpuPlan plan = plan_attention_cpu(p, 64);  // many "threads": forces a key split
  CHECK(plan.num_splits > 1);
  if (plan.num_splits <= 1) return;
  std::vector<CpuWorkItem> items(max_attention_cpu_items(p, plan));
  const int64_t n = fill_attention_cpu_items(p, plan, items.data());
  std::vector<float> ws_out(plan.num_splits * total_q * Hq * D), ws_lse(plan.num_splits * total_q * Hq);
  attention_cpu(p, plan, items.data(), 0, n, ws_out.data(), ws_lse.data());
  merge_attention_cpu(p, plan, ws_out.data(), ws_lse.data(), 0, total_q * Hq);

  for (int64_t b = 0; b < B; ++b) {
    const RequestSpan s = request_span(kv_lens.data(), q_cu.data(), total_q, b);
    for (int64_t i = 0; i < s.n_new; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t row = s.q_begin + i;
        std::vector<double> w;
        std::vector<int64_t> keys;
        double mx = -INFINITY;
        for (int64_t pos = 0; pos < s.kv_len + s.n_new; ++pos) {
          const int64_t pg = page_of(p.kv, b, pos);
          if (pg < 0) continue;
          if (pos >= s.kv_len && !new_token_visible(mode, tree.data(), 1, row, i, pos - s.kv_len))
            continue;
          const float* k = kc.data() + cache_offset(pg, pos % page, h / G, page * Hkv * D, Hkv * D, D);
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += double(q[(row * Hq + h) * D + d]) * k[d];
          w.push_back(dot * 0.3);
          keys.push_back(pos);
          mx = std::max(mx, w.back());
        }
        double total = 0;
        for (double& x : w) total += (x = std::exp(x - mx));
        CHECK(std::fabs(lse[row * Hq + h] - (mx + std::log(total))) < 1e-4);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (size_t k = 0; k < keys.size(); ++k) {
            const int64_t pg = page_of(p.kv, b, keys[k]);
            o += w[k] / total *
                 vc[cache_offset(pg, keys[k] % page, h / G, page * Hkv * D, Hkv * D, D) + d];
          }
          CHECK(std::fabs(out[(row * Hq + h) * D + d] - o) < 2e-5);
        }
      }
  }
}

int main() {
  test_tree_info();
  for (int32_t mode : {kCausal, kTree, kFull}) test_attention(mode);
  TEST_MAIN_END();
}
