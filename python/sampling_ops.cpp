// Binding of domino::sample: argument checks, output allocation, CPU/CUDA dispatch.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "binding_utils.h"
#include "domino/sampling.h"

namespace domino {
namespace binding {
namespace {

constexpr const char* kOp = "domino::sample";

// Names the reason a CPU row came out invalid (error path only: scans the row again).
[[noreturn]] void raise_invalid_row(const at::Tensor& logits, int64_t b, float temperature) {
  const at::Tensor row = logits.select(0, b).to(at::kFloat);
  const bool bad = row.isnan().any().item<bool>() || row.isposinf().any().item<bool>();
  DOMINO_CHECK_ARG(bad || !row.isneginf().all().item<bool>(), kOp, "logits", "row ", b,
                   " has every logit -inf: no token can be sampled");
  DOMINO_CHECK_ARG(bad, kOp, "temperature", "is too small at row ", b, ": ", temperature,
                   " makes the largest scaled logit overflow float32");
  DOMINO_CHECK_ARG(false, kOp, "logits", "row ", b, " contains NaN or +inf");
  TORCH_CHECK(false, "unreachable");
}

at::Tensor sample(const at::Tensor& logits, const at::Tensor& temperature,
                  const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
                  const std::optional<at::Tensor>& min_p, const at::Tensor& seed,
                  const at::Tensor& offset) {
  check_device_supported(logits, kOp, "logits");
  check_dim(logits, 2, kOp, "logits");
  const DType dtype = float_dtype(logits, kOp, "logits");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  DOMINO_CHECK_ARG(vocab > 0, kOp, "logits", "must have a non-empty vocabulary dimension, got shape ",
                   shape_str(logits));
  DOMINO_CHECK_ARG(vocab <= sampling::kMaxVocab, kOp, "logits",
                   "vocabulary must be <= 2^23 (exact fixed-point mass sums), got ", vocab);
  DOMINO_CHECK_ARG(logits.stride(1) == 1, kOp, "logits", "must have unit stride in the vocabulary dimension");
  check_vector(temperature, batch, at::kFloat, logits, kOp, "temperature", "logits");
  if (top_k) check_vector(*top_k, batch, at::kLong, logits, kOp, "top_k", "logits");
  if (top_p) check_vector(*top_p, batch, at::kFloat, logits, kOp, "top_p", "logits");
  if (min_p) check_vector(*min_p, batch, at::kFloat, logits, kOp, "min_p", "logits");
  check_vector(seed, batch, at::kLong, logits, kOp, "seed", "logits");
  check_vector(offset, batch, at::kLong, logits, kOp, "offset", "logits");

  at::Tensor out = at::empty({batch}, logits.options().dtype(at::kLong));
  if (batch == 0) return out;

  sampling::SampleParams p;
  p.logits = logits.data_ptr();
  p.dtype = dtype;
  p.batch = batch;
  p.vocab = vocab;
  p.row_stride = logits.stride(0);
  p.temperature = temperature.data_ptr<float>();
  p.top_k = top_k ? top_k->data_ptr<int64_t>() : nullptr;
  p.top_p = top_p ? top_p->data_ptr<float>() : nullptr;
  p.min_p = min_p ? min_p->data_ptr<float>() : nullptr;
  p.seed = seed.data_ptr<int64_t>();
  p.offset = offset.data_ptr<int64_t>();
  p.out = out.data_ptr<int64_t>();

  if (logits.is_cpu()) {
    // Values are readable on the CPU: reject bad parameters with a message instead of -1 rows.
    for (int64_t b = 0; b < batch; ++b) {
      const float t = p.temperature[b];
      DOMINO_CHECK_ARG(t >= 0.0f, kOp, "temperature", "must be >= 0 (0 means greedy), got ", t,
                       " at row ", b);
      if (p.top_k)
        DOMINO_CHECK_ARG(p.top_k[b] >= 0, kOp, "top_k", "must be >= 0 (0 means off), got ",
                         p.top_k[b], " at row ", b);
      if (p.top_p)
        DOMINO_CHECK_ARG(p.top_p[b] > 0.0f && p.top_p[b] <= 1.0f, kOp, "top_p",
                         "must be in (0, 1], got ", p.top_p[b], " at row ", b);
      if (p.min_p)
        DOMINO_CHECK_ARG(p.min_p[b] >= 0.0f && p.min_p[b] <= 1.0f, kOp, "min_p",
                         "must be in [0, 1], got ", p.min_p[b], " at row ", b);
    }
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      sampling::sample_rows_cpu(p, b0, b1);
    });
    // The parameters are valid, so a -1 row has unusable logits: raise, as domino::verify does.
    for (int64_t b = 0; b < batch; ++b)
      if (p.out[b] < 0) raise_invalid_row(logits, b, p.temperature[b]);
    return out;
  }
#ifdef DOMINO_WITH_CUDA
  const c10::cuda::CUDAGuard guard(logits.device());
  check_cuda_status(sampling::sample_cuda(p, current_stream(logits)), kOp);
#endif
  return out;
}

}  // namespace

DOMINO_IMPL_ALL_KEYS(m.impl("sample", &sample);)

}  // namespace binding
}  // namespace domino
