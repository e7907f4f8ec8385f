// Uses the framework-free core exactly as an engine would: plain params, raw pointers.
#include <cstdio>

#include "domino/sampling.h"

int main() {
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
  return token == 1 ? 0 : 1;
}
