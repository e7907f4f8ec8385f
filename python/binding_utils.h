// binding_utils.h: what every op binding shares. The binding layer is the only place that knows
// about torch: it validates arguments (messages name the argument and the expected shape/dtype),
// allocates outputs, fills the framework-free params struct and calls the CPU or CUDA launcher.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <climits>
#include <string>

#include "domino/common.h"

#ifdef DOMINO_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace domino {
namespace binding {

// Fails with "<op>: <arg> must ...". All checks below go through these so messages are uniform.
#define DOMINO_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK_VALUE(cond, op, ": argument '", arg, "' ", __VA_ARGS__)

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Every tensor argument: given (a required Tensor passed as None arrives undefined) and dense.
inline void check_tensor(const at::Tensor& t, const char* op, const char* arg) {
  DOMINO_CHECK_ARG(t.defined(), op, arg, "is required, got None");
  DOMINO_CHECK_ARG(t.layout() == at::kStrided, op, arg, "must be a dense (strided) tensor, got layout ",
                   t.layout());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* arg) {
  check_tensor(t, op, arg);
  DOMINO_CHECK_ARG(t.dim() == dim, op, arg, "must have ", dim, " dimensions, got shape ",
                   shape_str(t));
}

inline void check_size(const at::Tensor& t, int64_t d, int64_t size, const char* op,
                       const char* arg, const char* what) {
  DOMINO_CHECK_ARG(t.size(d) == size, op, arg, "must have size ", size, " in dimension ", d,
                   " (", what, "), got shape ", shape_str(t));
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op,
                        const char* arg) {
  DOMINO_CHECK_ARG(t.scalar_type() == dtype, op, arg, "must have dtype ", dtype, ", got ",
                   t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* arg, const char* ref_arg) {
  check_tensor(t, op, arg);
  DOMINO_CHECK_ARG(t.device() == ref.device(), op, arg, "must be on the same device as '",
                   ref_arg, "' (", ref.device(), "), got ", t.device());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* arg) {
  DOMINO_CHECK_ARG(t.is_contiguous(), op, arg, "must be contiguous");
}

// A per-request vector: shape [batch], given dtype, same device as `ref`, contiguous.
inline void check_vector(const at::Tensor& t, int64_t batch, at::ScalarType dtype,
                         const at::Tensor& ref, const char* op, const char* arg,
                         const char* ref_arg) {
  check_dim(t, 1, op, arg);
  check_size(t, 0, batch, op, arg, "batch");
  check_dtype(t, dtype, op, arg);
  check_same_device(t, ref, op, arg, ref_arg);
  check_contiguous(t, op, arg);
}

// Floating inputs: fp32, bf16 or fp16.
inline DType float_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default:
      DOMINO_CHECK_ARG(false, op, arg, "must have dtype float32, bfloat16 or float16, got ",
                       t.scalar_type());
  }
  return DType::F32;
}

inline void check_device_supported(const at::Tensor& t, const char* op, const char* arg) {
  check_tensor(t, op, arg);
#ifdef DOMINO_WITH_CUDA
  DOMINO_CHECK_ARG(t.is_cpu() || t.is_cuda(), op, arg, "must be a CPU or CUDA tensor, got ",
                   t.device());
#else
  DOMINO_CHECK_ARG(t.is_cpu(), op, arg,
                   "must be a CPU tensor: this build of domino_kernels has no CUDA kernels, got ",
                   t.device());
#endif
}

// A count the framework-free core holds in 32 bits: checked before narrowing.
inline int32_t checked_int32(int64_t v, const char* op, const char* arg) {
  DOMINO_CHECK_ARG(v >= INT32_MIN && v <= INT32_MAX, op, arg, "must fit in int32, got ", v);
  return int32_t(v);
}

// Registers an op's implementation for CPU (and CUDA) and as its CompositeExplicitAutograd kernel,
// which the dispatcher uses for every other backend (sparse layouts, CUDA tensors in a CPU-only
// build, other devices) and for calls with no tensor argument (None for every tensor): those calls
// reach the binding's checks, which name the argument, instead of the dispatcher's generic
// "could not run ... with arguments from the ... backend". Meta goes to the fake kernel.
#ifdef DOMINO_WITH_CUDA
#define DOMINO_IMPL_ALL_KEYS(REGISTER)                           \
  TORCH_LIBRARY_IMPL(domino, CPU, m) { REGISTER }                \
  TORCH_LIBRARY_IMPL(domino, CUDA, m) { REGISTER }               \
  TORCH_LIBRARY_IMPL(domino, CompositeExplicitAutograd, m) { REGISTER }
#else
#define DOMINO_IMPL_ALL_KEYS(REGISTER)                           \
  TORCH_LIBRARY_IMPL(domino, CPU, m) { REGISTER }                \
  TORCH_LIBRARY_IMPL(domino, CompositeExplicitAutograd, m) { REGISTER }
#endif

#ifdef DOMINO_WITH_CUDA
inline void* current_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}

inline void check_cuda_status(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed with cudaError ", err);
}
#endif

}  // namespace binding
}  // namespace domino
