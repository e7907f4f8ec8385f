// rollout_gumbel.h (CPU-private): the element math of the sampled rollout, a tile at a time.
//
// The sampled rollout draws with Gumbel-max: key = det::gumbel_key(score, u) with u the Philox
// uniform of (seed, offset, stream, vocabulary id), and q = softmax(scores) rows for verification.
// These functions compute exactly what the scalar domino::det / domino::rng code computes, bit for
// bit (the CPU rollout must keep matching the CUDA kernel and the reference draw for draw), but
// for a whole tile in straight-line loops: 16 Philox counters per AVX-512 call and branch-free
// logs (det_avx512.h), with the scalar code as the portable fallback (no AVX-512 or
// DOMINO_DISABLE_AVX512=1). The selection (top-k over the keys) stays with the caller.
#pragma once

#include <cstdint>

namespace domino {
namespace rollout {
namespace cpu {

// keys[j] = det::gumbel_key(s[j], rng::uniform(seed, offset, stream, id_j)) for j < n, where
// id_j = ids[j] when ids is given, else v0 + j. Elements with s[j] = -inf get -inf (-inf minus the
// finite noise); s holds no NaN (finish_scores maps NaN to -inf).
void gumbel_keys(const float* s, int64_t n, uint32_t v0, const int32_t* ids, uint64_t seed,
                 uint64_t offset, uint32_t stream, float* keys);

// noise[j] = det::log(det::sub(0, det::log(u[j]))) for uniforms u[j] in (0, 1) (the values
// rng::u32_to_uniform produces), so that det::gumbel_key(s, u) = det::sub(s, noise). Exposed for
// the exhaustive test over all 2^23 uniforms.
void gumbel_noise(const float* u, int64_t n, float* noise);

// q[j] = det::div(det::exp(det::sub(q[j], max)), sum) for j < n: a row of scaled scores (finite
// or -inf, none above max) to probabilities under the row's (max, sum).
void softmax_row(float* q, int64_t n, float max, float sum);

}  // namespace cpu
}  // namespace rollout
}  // namespace domino
