// The framework-free sampling core without torch: greedy ties, invalid rows, filters, RNG
// reproducibility, and that top-k=1 always returns the argmax.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "domino/sampling.h"

using namespace domino;

struct Batch {
  std::vector<float> logits, temperature, top_p, min_p;
  std::vector<int64_t> top_k, seed, offset, out;
  sampling::SampleParams params(int64_t batch, int64_t vocab) {
    sampling::SampleParams p;
    p.logits = logits.data();
    p.dtype = DType::F32;
    p.batch = batch;
    p.vocab = vocab;
    p.row_stride = vocab;
    p.temperature = temperature.data();
    p.top_k = top_k.data();
    p.top_p = top_p.data();
    p.min_p = min_p.data();
    p.seed = seed.data();
    p.offset = offset.data();
    p.out = out.data();
    return p;
  }
};

int main() {
  const int64_t B = 6, V = 50;
  Batch b;
  b.logits.resize(B * V);
  for (int64_t i = 0; i < B * V; ++i) b.logits[i] = std::sin(float(i) * 0.37f) * 3.0f;
  b.logits[0 * V + 7] = 10.0f;
  b.logits[0 * V + 3] = 10.0f;                      // row 0: tie at 3 and 7 -> greedy picks 3
  b.logits[1 * V + 4] = std::nanf("");              // row 1: NaN -> -1
  for (int64_t v = 0; v < V; ++v) b.logits[2 * V + v] = -INFINITY;  // row 2: all -inf -> -1
  b.temperature = {0.0f, 1.0f, 1.0f, 0.7f, 1.0f, 1.0f};
  b.top_k = {0, 0, 0, 1, 0, 5};
  b.top_p = {1.0f, 1.0f, 1.0f, 1.0f, 0.5f, 1.0f};
  b.min_p = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  b.seed = {1, 2, 3, 4, 5, 6};
  b.offset = {0, 0, 0, 0, 0, 0};
  b.out.assign(B, -2);
  sampling::SampleParams p = b.params(B, V);
  sampling::sample_rows_cpu(p, 0, B);
  CHECK(b.out[0] == 3);
  CHECK(b.out[1] == -1);
  CHECK(b.out[2] == -1);
  int64_t argmax3 = 0;
  for (int64_t v = 1; v < V; ++v)
    if (b.logits[3 * V + v] > b.logits[3 * V + argmax3]) argmax3 = v;
  CHECK(b.out[3] == argmax3);  // top-k 1 is the argmax whatever the noise
  CHECK(b.out[4] >= 0 && b.out[4] < V);
  // top-k 5: the token is one of the 5 largest
  int rank = 0;
  for (int64_t v = 0; v < V; ++v) rank += b.logits[5 * V + v] > b.logits[5 * V + b.out[5]];
  CHECK(rank < 5);
  // Same seeds -> same tokens; another offset -> a fresh draw for some row over many offsets.
  std::vector<int64_t> first = b.out;
  sampling::sample_rows_cpu(p, 0, B);
  CHECK(first == b.out);
  bool changed = false;
  for (int64_t off = 1; off < 20 && !changed; ++off) {
    b.offset.assign(B, off);
    sampling::sample_rows_cpu(p, 0, B);
    changed = b.out[4] != first[4];
  }
  CHECK(changed);
  TEST_MAIN_END();
}
