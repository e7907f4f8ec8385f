// The framework-free verification core without torch: a greedy chain with its bonus token, a
// greedy tree, ragged padding, the defined results for invalid ids (accept_len -1, -1 rows, a
// status naming the fault), and the exact helpers (uniform52, uniform_below, to_fixed).
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "../../csrc/cpu/row_filter.h"
#include "domino/verify.h"

using namespace domino;

struct Batch {
  int64_t B, T, V;
  std::vector<int64_t> tokens, parents, num_nodes, seed, offset, accept_len, path, emitted;
  std::vector<int64_t> status_node;
  std::vector<int32_t> status;
  std::vector<float> logits, temperature;
  Batch(int64_t b, int64_t t, int64_t v)
      : B(b), T(t), V(v), tokens(b * t, 0), parents(b * t, -1), num_nodes(b, t), seed(b, 1),
        offset(b, 0), accept_len(b, -9), path(b * t, -9), emitted(b * t, -9), status_node(b),
        status(b), logits(b * t * v, 0.0f), temperature(b, 0.0f) {}
  // Row (b, i) prefers token `tok`.
  void prefer(int64_t b, int64_t i, int64_t tok) { logits[(b * T + i) * V + tok] = 5.0f; }
  void run(int32_t rule) {
    verify::VerifyParams p;
    p.draft_tokens = tokens.data();
    p.parents = parents.data();
    p.num_nodes = num_nodes.data();
    p.logits = logits.data();
    p.logits_stride_b = T * V;
    p.logits_stride_t = V;
    p.batch = B;
    p.nodes = T;
    p.vocab = V;
    p.temperature = temperature.data();
    p.seed = seed.data();
    p.offset = offset.data();
    p.rule = rule;
    p.accept_len = accept_len.data();
    p.accept_path = path.data();
    p.emitted = emitted.data();
    p.status = status.data();
    p.status_node = status_node.data();
    verify::verify_rows_cpu(p, 0, B);
  }
};

int main() {
  // Request 0: chain 0-1-2-3, all accepted, bonus 9. Request 1: tree 0->{1,2}, 2->{3}; the target
  // picks node 2 then rejects node 3 (correction 6). Request 2: one node used of 4 (ragged), with
  // garbage in the padding. Request 3: parents[2] = 2 (invalid).
  Batch b(4, 4, 10);
  b.tokens = {0, 1, 2, 3, /**/ 0, 4, 5, 7, /**/ 0, 99, -5, 3, /**/ 0, 1, 2, 3};
  b.parents = {-1, 0, 1, 2, /**/ -1, 0, 0, 2, /**/ -1, 7, 7, 7, /**/ -1, 0, 2, 1};
  b.num_nodes = {4, 4, 1, 4};
  for (int i = 0; i < 3; ++i) b.prefer(0, i, i + 1);
  b.prefer(0, 3, 9);
  b.prefer(1, 0, 5);
  b.prefer(1, 2, 6);
  b.prefer(2, 0, 8);
  b.run(verify::kGreedy);
  CHECK(b.accept_len[0] == 3);
  CHECK(b.path[0] == 0 && b.path[3] == 3 && b.emitted[0] == 1 && b.emitted[3] == 9);
  CHECK(b.accept_len[1] == 1);
  CHECK(b.path[4] == 0 && b.path[5] == 2 && b.path[6] == -1);
  CHECK(b.emitted[4] == 5 && b.emitted[5] == 6 && b.emitted[6] == -1);
  CHECK(b.accept_len[2] == 0 && b.emitted[8] == 8 && b.emitted[9] == -1 && b.path[9] == -1);
  CHECK(b.status[2] == verify::kOk);
  CHECK(b.accept_len[3] == -1 && b.status[3] == verify::kBadParent && b.status_node[3] == 2);
  for (int i = 12; i < 16; ++i) CHECK(b.path[i] == -1 && b.emitted[i] == -1);

  // NaN in a visited row is flagged; in an unvisited row it is not read.
  Batch c(2, 3, 6);
  c.tokens = {0, 2, 3, 0, 2, 3};
  c.parents = {-1, 0, 1, -1, 0, 1};
  c.prefer(0, 0, 2);
  c.prefer(1, 0, 4);  // request 1 rejects at the root: row 1 (NaN) is never visited
  c.logits[(0 * 3 + 1) * 6 + 0] = std::nanf("");
  c.logits[(1 * 3 + 1) * 6 + 0] = std::nanf("");
  c.run(verify::kGreedy);
  CHECK(c.accept_len[0] == -1 && c.status[0] == verify::kBadLogits && c.status_node[0] == 1);
  CHECK(c.accept_len[1] == 0 && c.emitted[3] == 4);

  // Exact helpers.
  CHECK(verify::uniform52(0) > 0.0 && verify::uniform52(~uint64_t(0)) < 1.0);
  CHECK(rng::uniform_below(~uint64_t(0), 7) == 6 && rng::uniform_below(0, 7) == 0);
  CHECK(verify::to_fixed(0.5f, 1000.0) == 500 && verify::to_fixed(0.0f, 1e9) == 0);
  CHECK(verify::to_fixed(std::nanf(""), 1e9) == 0 && verify::to_fixed(2.0f, 10.0) == 10);
  CHECK(verify::to_fixed(1.0f, INFINITY) == uint64_t(1) << 62);
  // The vectorisable exp of the CPU row filter is det::exp bit for bit on [-87.33, 0].
  int64_t exp_mismatch = 0;
  for (uint32_t u = 0x80000000u; bits_to_float(u) >= -87.33f; u += 61) {  // every 61st float
    const float x = bits_to_float(u);
    exp_mismatch += float_to_bits(cpu::exp_nonpositive(x)) != float_to_bits(det::exp(x));
  }
  CHECK(exp_mismatch == 0);
  // ... and its fixed-point mass is det::fixed_mass on [0, 1].
  int64_t mass_mismatch = 0;
  for (uint32_t u = 0; bits_to_float(u) <= 1.0f; u += 53)
    mass_mismatch += cpu::fixed_mass_unit(bits_to_float(u)) != det::fixed_mass(bits_to_float(u));
  mass_mismatch += cpu::fixed_mass_unit(1.0f) != det::fixed_mass(1.0f);
  CHECK(mass_mismatch == 0);
  TEST_MAIN_END();
}
