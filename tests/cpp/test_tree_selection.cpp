// The shared tree selection (rollout.h: child_scores, rank_within, emit_tree) on random pools with
// random log q values including NaN, +-inf and (bad) positive values, greedy and sampled scoring:
// the emitted tree never exceeds the budget nor writes past its M slots, holds exactly
// min(pool, M) nodes, is ancestor-closed in verification layout (parents before children,
// siblings contiguous) and keeps a prefix of every node's children in rank order; rank_within
// agrees with a sort by (score desc, index asc). The spine (the rank-0 path from the anchor,
// tracked here independently of the scores) is marked exactly by kSpineScore, every beam holds
// its depth's spine node, and the spine ranks before every other node, in depth order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "domino/rollout.h"

using namespace domino;
using namespace domino::rollout;

int main() {
  std::mt19937 rng(11);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float specials[] = {nan, inf, -inf, 0.0f, -0.0f, 1e-3f, 2.0f, -1e30f, -1e-45f};
  for (int trial = 0; trial < 3000; ++trial) {
    const int k = 1 + int(rng() % kMaxTopK), depth = 1 + int(rng() % 6);
    const bool sampled = rng() % 2;
    // Grow a pool as the engine does: per depth expand up to k nodes of the newest depth.
    std::vector<int64_t> tok{7};
    std::vector<int32_t> par{-1}, rank{0};
    std::vector<uint8_t> spine{1};
    std::vector<float> q{1.0f}, acc{0.0f}, score{kSpineScore};
    std::vector<int32_t> frontier{0};
    for (int d = 0; d < depth && !frontier.empty(); ++d) {
      const int32_t begin = int32_t(tok.size());
      for (int32_t f : frontier) {
        const int nc = int(rng() % (k + 1));
        float lq[kMaxTopK], a[kMaxTopK], s[kMaxTopK];
        for (int j = 0; j < nc; ++j) {
          const unsigned pick = rng() % 8;
          lq[j] = pick == 0 ? specials[rng() % (sizeof(specials) / sizeof(float))]
                            : -std::exponential_distribution<float>(0.7f)(rng);
          if (pick == 1 && j > 0) lq[j] = lq[j - 1];  // ties
        }
        child_scores(acc[f], score[f], sampled, lq, nc, a, s);
        for (int j = 0; j < nc; ++j) {
          CHECK(!std::isnan(a[j]) && !std::isnan(s[j]));
          CHECK(s[j] <= score[f] && a[j] <= acc[f] && a[j] <= 0.0f);
          if (j > 0) CHECK(s[j] <= s[j - 1]);
          const bool on = spine[f] && j == 0;
          CHECK(on_spine(s[j]) == on);
          if (!on) CHECK(s[j] <= acc[f]);
          spine.push_back(on);
          tok.push_back(int64_t(tok.size()) * 10);
          par.push_back(f);
          rank.push_back(j);
          q.push_back(std::exp(lq[j]));
          acc.push_back(a[j]);
          score.push_back(s[j]);
        }
      }
      const int32_t end = int32_t(tok.size());
      std::vector<int32_t> next;
      for (int32_t c = begin; c < end; ++c)
        if (rank_within(score.data(), begin, end, c, k) < k) next.push_back(c);
      CHECK(int(next.size()) == std::min(k, end - begin));
      for (int32_t c = begin; c < end; ++c)  // the beam holds the depth's spine node
        if (spine[c]) CHECK(std::find(next.begin(), next.end(), c) != next.end());
      frontier = next;
    }
    const int32_t n = int32_t(tok.size());
    // rank_within == position in a sort by (score desc, index asc)
    std::vector<int32_t> order(n);
    for (int32_t c = 0; c < n; ++c) order[c] = c;
    std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return ranks_before(score[x], x, score[y], y); });
    for (int32_t r = 0; r < n; ++r) CHECK(rank_within(score.data(), 0, n, order[r], n) == r);
    CHECK(order[0] == 0);  // the anchor ranks first
    int32_t num_spine = 0;  // then the rest of the spine, in depth (= pool) order
    for (int32_t c = 0; c < n; ++c) num_spine += spine[c];
    for (int32_t r = 0; r < n; ++r) CHECK(bool(spine[order[r]]) == (r < num_spine));
    for (int32_t r = 1; r < num_spine; ++r) CHECK(order[r] > order[r - 1] && par[order[r]] == order[r - 1]);

    const int32_t M = 1 + int32_t(rng() % 12);
    std::vector<uint8_t> keep(n);
    for (int32_t c = 0; c < n; ++c) keep[c] = rank_within(score.data(), 0, n, c, M) < M;
    const int32_t guard = 4;  // sentinels past the M slots must stay untouched
    std::vector<int64_t> tokens(M + guard, -7), parents(M + guard, -7);
    std::vector<float> qo(M + guard, -7.0f);
    std::vector<int32_t> out_id(n), source(M + guard, -7);
    const int32_t num = emit_tree(tok.data(), par.data(), q.data(), keep.data(), n, M, out_id.data(),
                                  tokens.data(), parents.data(), qo.data(), source.data());
    CHECK(num == std::min(n, M));
    for (int32_t j = M; j < M + guard; ++j) CHECK(tokens[j] == -7 && parents[j] == -7 && qo[j] == -7.0f && source[j] == -7);
    for (int32_t j = num; j < M; ++j) CHECK(tokens[j] == -1 && parents[j] == -1 && qo[j] == 0.0f && source[j] == -1);
    CHECK(tokens[0] == 7 && parents[0] == -1 && source[0] == 0);
    for (int32_t j = 1; j < num; ++j) {
      const int32_t c = source[j];
      CHECK(c > 0 && keep[c]);
      CHECK(parents[j] >= 0 && parents[j] < j && source[parents[j]] == par[c]);  // ancestor-closed
      CHECK(tokens[j] == tok[c]);
      if (j > 1 && parents[j] != parents[j - 1]) {  // siblings contiguous
        for (int32_t l = 1; l < j - 1; ++l) CHECK(parents[l] != parents[j]);
      }
      if (rank[c] > 0) CHECK(keep[c - 1] && par[c - 1] == par[c]);  // a prefix of the children
    }
  }
  TEST_MAIN_END();
}
