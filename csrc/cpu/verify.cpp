// CPU implementation of domino::verify (semantics in domino/verify.h).
//
// The walk (verify_request) is the shared header code; this file supplies the CPU row backend:
// a visited node's row is filtered once by the row filter shared with domino::sample
// (row_filter.h), which leaves the fixed-point masses in a scratch vector, and the sums and
// inverse-CDF searches the walk asks for are plain loops over it. Only visited nodes are read.
#include <vector>

#include "domino/verify.h"
#include "row_filter.h"

namespace domino {
namespace verify {
namespace {

template <typename T>
struct CpuRow {
  const VerifyParams* p = nullptr;
  int64_t b = 0;
  cpu::RowScratch s;
  std::vector<int64_t> kids_buf, kid_tok_buf;
  std::vector<double> scales_buf;
  int64_t* kids = nullptr;
  int64_t* kid_tok = nullptr;
  double* scales = nullptr;
  int64_t best = -1;
  uint64_t W = 0;

  void reset(const VerifyParams& params, int64_t request) {
    p = &params;
    b = request;
    kids_buf.resize(size_t(params.nodes));
    kid_tok_buf.resize(size_t(params.nodes));
    scales_buf.resize(size_t(params.nodes));
    kids = kids_buf.data();
    kid_tok = kid_tok_buf.data();
    scales = scales_buf.data();
  }

  bool load(int64_t node, bool greedy) {
    const T* row = static_cast<const T*>(p->logits) + b * p->logits_stride_b +
                   node * p->logits_stride_t;
    const int64_t n = p->vocab;
    if (greedy) {
      best = cpu::greedy_argmax(row, n);
      return best >= 0;
    }
    const int64_t top_k = p->top_k ? p->top_k[b] : 0;
    const float top_p = p->top_p ? p->top_p[b] : 1.0f;
    const cpu::FilteredRow fr =
        cpu::filter_row(row, n, det::div(1.0f, p->temperature[b]), top_k, top_p,
                         /*want_mass=*/true, s);
    if (!fr.valid) return false;
    W = fr.total;
    return true;
  }

  int64_t argmax() const { return best; }
  uint64_t total() const { return W; }
  uint64_t mass(int64_t v) const { return s.mass[v]; }

  template <class F>
  uint64_t sum(const F& f) const {
    uint64_t t = 0;
    for (int64_t v = 0; v < p->vocab; ++v) t += f(v);
    return t;
  }

  template <class F>
  int64_t find(uint64_t r, const F& f) const {
    uint64_t acc = 0;
    for (int64_t v = 0; v < p->vocab; ++v) {
      acc += f(v);
      if (acc > r) return v;
    }
    return -1;
  }

  bool leader() const { return true; }
  void sync() const {}
};

}  // namespace

void verify_rows_cpu(const VerifyParams& p, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    thread_local CpuRow<T> row;  // scratch reused across calls: no per-call allocation
    for (int64_t b = begin; b < end; ++b) {
      row.reset(p, b);
      verify_request(p, b, row);
    }
  });
}

}  // namespace verify
}  // namespace domino
