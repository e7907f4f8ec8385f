// csrc/cpu/row_filter.h: the processed-target row filter on the CPU (temperature, top-k, top-p),
// shared by domino::sample and domino::verify so both apply exactly the same definitions
// (domino/sampling.h): s_v = l_v * (1/T), top-k keeps keys >= the k-th largest key (ties kept),
// top-p keeps keys >= the largest t* whose fixed-point mass from the top reaches p * total.
// Internal to the CPU kernels (not an installed header).
#pragma once

#include <vector>

#include "domino/numerics.h"
#include "domino/sampling.h"

namespace domino {
namespace cpu {

struct RowScratch {
  std::vector<float> scaled;   // s_v = l_v * (1/T)
  std::vector<uint32_t> keys;  // ordered_key(s_v)
  std::vector<float> expo;     // exp(s_v - m) for what top-k kept, else 0
  std::vector<uint64_t> mass;  // fixed_mass(expo); with want_mass: 0 outside the kept set
};

// Greedy pick of a logits row (T = 0): the first index of the largest logit; -1 when a logit is
// NaN or +inf (the row is invalid) or no logit is above -inf.
template <typename T>
inline int64_t greedy_argmax(const T* row, int64_t n) {
  float best = -det::kInf;
  int64_t best_idx = -1;
  for (int64_t v = 0; v < n; ++v) {
    const float l = to_float(row[v]);
    if (det::is_nan(l) || l == det::kInf) return -1;
    if (l > best) {
      best = l;
      best_idx = v;
    }
  }
  return best_idx;
}

// k-th largest key (1-based k), MSB-first radix select.
inline uint32_t kth_largest_key(const uint32_t* keys, int64_t n, uint32_t k) {
  uint32_t prefix = 0, mask = 0, remaining = k;
  uint32_t hist[256];
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (auto& h : hist) h = 0;
    for (int64_t v = 0; v < n; ++v)
      if ((keys[v] & mask) == prefix) ++hist[(keys[v] >> shift) & 255u];
    const uint32_t bin = uint32_t(sampling::select_bucket_by_count(hist, remaining));
    prefix |= bin << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// Largest key t with mass({key >= max(t, floor_key)}) >= target.
inline uint32_t top_p_key(const uint32_t* keys, const uint64_t* mass, int64_t n,
                          uint32_t floor_key, double target) {
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0;
  uint64_t hist[256];
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (auto& h : hist) h = 0;
    for (int64_t v = 0; v < n; ++v) {
      const uint32_t k = keys[v];
      if (k >= floor_key && (k & mask) == prefix) hist[(k >> shift) & 255u] += mass[v];
    }
    const uint32_t bin = uint32_t(sampling::select_bucket_by_mass(hist, above, target));
    prefix |= bin << shift;
    mask |= 255u << shift;
  }
  return prefix;
}

// det::exp's exact operation sequence for x in [-87.33, 0] (no NaN), without its range branches
// and with floor done by truncation, so that the compiler can vectorise the loops calling it.
// Bit-identical to det::exp on that range (the row filter uses [-28, 0]);
// tests/cpp/test_verify_cpu.cpp checks millions of points.
inline float exp_nonpositive(float x) {
  const float y = det::add(det::mul(x, 1.44269504089f), 0.5f);
  const float t = float(int32_t(y));  // truncation toward 0; floor(y) = t, or t - 1 when t > y
  const float kf = det::sub(t, t > y ? 1.0f : 0.0f);  // selects constants: no branch
  const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  const float r = det::sub(det::sub(x, det::mul(kf, ln2_hi)), det::mul(kf, ln2_lo));
  float p = 1.98412698e-4f;
  p = det::add(det::mul(p, r), 1.38888889e-3f);
  p = det::add(det::mul(p, r), 8.33333333e-3f);
  p = det::add(det::mul(p, r), 4.16666667e-2f);
  p = det::add(det::mul(p, r), 1.66666667e-1f);
  p = det::add(det::mul(p, r), 0.5f);
  p = det::add(det::mul(p, r), 1.0f);
  p = det::add(det::mul(p, r), 1.0f);
  const int32_t k = int32_t(kf);
  const int32_t k1 = k / 2, k2 = k - k1;
  const float s1 = bits_to_float(uint32_t(k1 + 127) << 23);
  const float s2 = bits_to_float(uint32_t(k2 + 127) << 23);
  return det::mul(det::mul(p, s1), s2);
}

// det::fixed_mass(e) = trunc(e * 2^40) for e in [0, 1], with int32 conversions only (so the loop
// vectorises): x = e * 2^40 is exact, hi = trunc(x / 2^16) < 2^24 + 1, and x - hi * 2^16 is exact
// (a multiple of ulp(x), below 2^16), so hi * 2^16 + trunc(x - hi * 2^16) = trunc(x).
inline uint64_t fixed_mass_unit(float e) {
  const float x = det::mul(e, det::kMassScale);
  const int32_t hi = int32_t(det::mul(x, 1.52587890625e-05f));  // x * 2^-16, truncated
  const int32_t lo = int32_t(det::sub(x, det::mul(float(hi), 65536.0f)));
  return (uint64_t(uint32_t(hi)) << 16) + uint64_t(uint32_t(lo));
}

// Result of filtering one row at temperature T > 0.
struct FilteredRow {
  bool valid = false;      // false: a NaN/+inf logit, every logit -inf, or the max overflows
  float m = 0.0f;          // max scaled logit
  uint32_t floor_key = 0;  // kept set = {v : keys[v] >= floor_key}
  uint64_t total = 0;      // with want_mass: W, the sum of the kept tokens' masses
};

// Scales the row by inv_temperature (= det::div(1, T), rounded once), finds the max, applies
// top-k (0 < top_k < n) and top-p (top_p < 1). Fills s.scaled, s.keys, s.expo; with `want_mass`
// s.mass[v] is the fixed-point mass of each kept token and 0 for the others.
template <typename T>
FilteredRow filter_row(const T* row, int64_t n, float inv_temperature, int64_t top_k, float top_p,
                       bool want_mass, RowScratch& s) {
  FilteredRow r;
  s.scaled.resize(n);
  s.keys.resize(n);
  uint32_t max_key = 0;
  int bad = 0, any = 0;
  for (int64_t v = 0; v < n; ++v) {  // branch-free so that it vectorises
    const float l = to_float(row[v]);
    bad |= (l != l) | (l == det::kInf);
    any |= l > -det::kInf;
    const float sv = det::mul(l, inv_temperature);
    s.scaled[v] = sv;
    const uint32_t k = det::ordered_key(sv);
    s.keys[v] = k;
    max_key = k > max_key ? k : max_key;
  }
  r.m = det::key_to_float(max_key);
  if (bad || !any || !det::is_finite(r.m)) return r;
  r.valid = true;
  if (top_k > 0 && top_k < n) r.floor_key = kth_largest_key(s.keys.data(), n, uint32_t(top_k));
  // Below kNoMass the fixed-point mass is exactly 0 (exp(-28) * 2^40 = 0.76 truncates to 0, and
  // det::exp is monotone to 1 ulp), so exp is skipped there: identical results, and most of a
  // real LLM vocabulary lies that far below the max.
  constexpr float kNoMass = -28.0f;
  s.expo.resize(n);
  for (int64_t v = 0; v < n; ++v) {
    const float sc = det::sub(s.scaled[v], r.m);  // <= 0
    const float e = exp_nonpositive(sc >= kNoMass ? sc : kNoMass);
    s.expo[v] = s.keys[v] >= r.floor_key && sc >= kNoMass ? e : 0.0f;
  }
  if (top_p < 1.0f || want_mass) {
    s.mass.resize(n);
    uint64_t total = 0;
    for (int64_t v = 0; v < n; ++v) total += s.mass[v] = fixed_mass_unit(s.expo[v]);
    if (top_p < 1.0f) {
      const uint32_t pk = top_p_key(s.keys.data(), s.mass.data(), n, r.floor_key,
                                    double(top_p) * double(total));
      if (pk > r.floor_key) r.floor_key = pk;
    }
    if (want_mass && top_p < 1.0f) {
      total = 0;
      for (int64_t v = 0; v < n; ++v)
        total += s.mass[v] = s.keys[v] >= r.floor_key ? s.mass[v] : 0;
    }
    r.total = total;
  }
  return r;
}

}  // namespace cpu
}  // namespace domino
