// Framework-free test of the rollout engine (no torch): the chain equals the topk-1 tree, the
// tree layout invariants hold, a lowered winning base logit moves the argmax, and the GRU cell
// matches its closed form.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "domino/rollout.h"

using namespace domino;
using namespace domino::rollout;

struct Model {
  int64_t B = 3, S = 8, H = 40, G = 16, E = 20, V = 97;
  std::vector<float> w_ih, w_hh, w1, w2, emb, hidden, base;
  std::vector<int64_t> anchor;
  explicit Model(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    auto fill = [&](std::vector<float>& v, size_t size, float sc) {
      v.resize(size);
      for (auto& x : v) x = n(rng) * sc;
    };
    fill(w_ih, 3 * G * H, 0.3f); fill(w_hh, 3 * G * G, 0.3f); fill(w1, E * (H + G), 0.3f);
    fill(w2, V * E, 1.0f); fill(emb, V * H, 1.0f); fill(hidden, B * S * H, 1.0f);
    fill(base, B * S * V, 1.0f);
    for (int64_t b = 0; b < B; ++b) anchor.push_back(int64_t(rng() % V));
  }
  RolloutParams params(int32_t depth, int32_t P) const {
    RolloutParams p;
    p.hidden = hidden.data(); p.hidden_stride_b = S * H; p.hidden_stride_s = H;
    p.base = base.data(); p.base_dtype = DType::F32; p.base_stride_b = S * V; p.base_stride_n = V;
    p.anchor = anchor.data();
    p.w_ih = w_ih.data(); p.w_hh = w_hh.data(); p.w1 = w1.data(); p.w2 = w2.data();
    p.embedding = emb.data(); p.wdtype = DType::F32;
    p.B = B; p.S = S; p.H = H; p.G = G; p.E = E; p.V = V;
    p.depth = depth; p.pure_prefix = P; p.shift_label = true;
    return p;
  }
};

int main() {
  Model m(7);
  const int32_t N = 6;
  std::vector<int64_t> chain(m.B * N), tokens(m.B * (N + 1)), parents(m.B * (N + 1)), num(m.B);
  std::vector<float> q(m.B * N), tq(m.B * (N + 1));
  RolloutParams p = m.params(N, 1);
  p.topk = 1; p.budget = N; p.tokens = chain.data(); p.q = q.data();
  rollout_cpu(p, nullptr);
  RolloutParams t = m.params(N, 1);
  t.tree = true; t.topk = 1; t.budget = N;
  t.tokens = tokens.data(); t.parents = parents.data(); t.q = tq.data(); t.num_nodes = num.data();
  rollout_cpu(t, nullptr);
  for (int64_t b = 0; b < m.B; ++b) {
    CHECK(num[b] == N + 1);
    CHECK(tokens[b * (N + 1)] == m.anchor[b] && parents[b * (N + 1)] == -1);
    for (int i = 1; i <= N; ++i) {
      CHECK(tokens[b * (N + 1) + i] == chain[b * N + i - 1]);
      CHECK(parents[b * (N + 1) + i] == i - 1);
      CHECK(q[b * N + i - 1] > 0.0f && q[b * N + i - 1] <= 1.0f);
    }
  }
  // A wider tree: layout invariants.
  const int32_t budget = 12;
  std::vector<int64_t> tt(m.B * (budget + 1)), tp(m.B * (budget + 1)), tn(m.B);
  std::vector<float> tqq(m.B * (budget + 1));
  RolloutParams w = m.params(4, 0);
  w.tree = true; w.topk = 3; w.budget = budget;
  w.tokens = tt.data(); w.parents = tp.data(); w.q = tqq.data(); w.num_nodes = tn.data();
  rollout_cpu(w, nullptr);
  for (int64_t b = 0; b < m.B; ++b) {
    CHECK(tn[b] == budget + 1);
    for (int64_t i = 1; i < tn[b]; ++i) {
      const int64_t par = tp[b * (budget + 1) + i];
      CHECK(par >= 0 && par < i);
      CHECK(tt[b * (budget + 1) + i] >= 0 && tt[b * (budget + 1) + i] < m.V);
    }
  }
  // Mutation: lowering the chosen base logit of a pure-prefix step moves its token.
  Model m2 = m;
  m2.base[0 * m.S * m.V + 0 * m.V + chain[0]] -= 100.0f;
  std::vector<int64_t> chain2(m.B * N);
  RolloutParams p2 = m2.params(N, 1);
  p2.topk = 1; p2.budget = N; p2.tokens = chain2.data(); p2.q = q.data();
  rollout_cpu(p2, nullptr);
  CHECK(chain2[0] != chain[0]);
  for (int64_t i = N; i < m.B * N; ++i) CHECK(chain2[i] == chain[i]);
  // GRU cell closed form.
  const float h = 0.3f, gr = 0.1f, gz = -0.2f, gn = 0.5f, hr = 0.2f, hz = 0.1f, hn = -0.4f;
  const float r = 1.0f / (1.0f + std::exp(-(gr + hr))), u = 1.0f / (1.0f + std::exp(-(gz + hz)));
  const float want = (1.0f - u) * std::tanh(gn + r * hn) + u * h;
  CHECK(std::fabs(gru_cell(gr, gz, gn, hr, hz, hn, h) - want) < 1e-6f);
  TEST_MAIN_END();
}
