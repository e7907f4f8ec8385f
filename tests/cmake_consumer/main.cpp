// Uses the framework-free core exactly as an engine would: plain params, raw pointers. Covers one
// op of each kind an engine needs from csrc/ alone: sampling, and the rollout's precomputed inputs
// (GRU input table, candidate shortlist).
#include <cstdio>

#include "domino/rollout_prep.h"
#include "domino/sampling.h"

namespace {

bool greedy_sample() {
  float logits[4] = {0.0f, 3.0f, 1.0f, 2.0f};
  float temperature = 0.0f;  // greedy
  int64_t seed = 1, offset = 0, token = -2;
  domino::sampling::SampleParams p;
  p.logits = logits;
  p.batch = 1;
  p.vocab = 4;
  p.row_stride = 4;
  p.temperature = &temperature;
  p.seed = &seed;
  p.offset = &offset;
  p.out = &token;
  domino::sampling::sample_rows_cpu(p, 0, 1);
  std::printf("vendored domino::kernels: greedy token %lld\n", static_cast<long long>(token));
  return token == 1;
}

bool gru_table() {
  const float emb[3 * 2] = {1, 2, 3, 4, 0, -1};  // [V = 3, H = 2]
  const float w_ih[3 * 2] = {1, 0, 0, 1, 1, 1};  // [3G = 3, H = 2]
  const float want[3 * 3] = {1, 2, 3, 3, 4, 7, 0, -1, -1};
  float table[3 * 3] = {};
  domino::rollout::GruTableParams p;
  p.embedding = emb;
  p.w_ih = w_ih;
  p.V = 3;
  p.H = 2;
  p.G3 = 3;
  p.table = table;
  domino::rollout::build_gru_table_cpu(p, 0, 3);
  for (int i = 0; i < 9; ++i)
    if (table[i] != want[i]) return false;
  std::printf("vendored domino::kernels: gru table row 1 = %g %g %g\n", table[3], table[4], table[5]);
  return true;
}

bool shortlist() {
  // base [B = 1, 3 proposals, V = 5]; proposal 0 is pure (P = 1): best = {1, 5, 2, 5, -1}.
  const float base[3 * 5] = {9, 9, 9, 9, 9, 0, 5, 2, 1, -1, 1, 3, 2, 5, -2};
  int32_t out[3] = {-1, -1, -1};
  domino::rollout::ShortlistParams p;
  p.base = base;
  p.base_stride_b = 15;
  p.base_stride_n = 5;
  p.B = 1;
  p.V = 5;
  p.first = 1;
  p.end = 3;
  p.K = 3;
  p.out = out;
  domino::rollout::shortlist_cpu(p, 0, 1);
  std::printf("vendored domino::kernels: shortlist %d %d %d\n", out[0], out[1], out[2]);
  return out[0] == 1 && out[1] == 3 && out[2] == 2;
}

}  // namespace

int main() {
  const bool ok = greedy_sample() & gru_table() & shortlist();
  return ok ? 0 : 1;
}
