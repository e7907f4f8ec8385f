// CPU implementation of the Domino rollout (semantics in domino/rollout.h).
//
// One engine runs both the chain (topk 1, budget N) and the dynamic tree. Per depth it does:
//   m     = silu(zp[b, i] + (W1h h)[node])            every beam row (zp = W1z zz, hoisted),
//           stored in the weight dtype (head_activation)
//   pass  = one sweep over W2 in tiles of kTile rows: each W2 row (or packed group of 16 rows,
//           pack_w2_bf16) is read once and dotted with all the level's m rows (weight-stationary;
//           kernels in rollout_dot.h), then the tile's scores get the base logits added and are
//           folded into the row's running TopK (online max/sum-exp, argmax / top-k / Gumbel
//           top-k). Threads own contiguous chunks of tiles.
//   merge = the per-chunk partials of each row, in chunk order
//   pool  = the children join the request's candidate pool (child_scores), the next beam is chosen
//           (rank_within), then the GRU cell of every beam node and one GEMV pass [W1h | W_hh] h_new
//           for all of them (W_ih h-input via a table row gather or a GEMV).
//   emit  = the budget selection and the output layout (rank_within, emit_tree / emit_chain).
#include <algorithm>
#include <cmath>
#include <vector>

#include "domino/rollout.h"
#include "rollout_dot.h"
#include "rollout_gumbel.h"

namespace domino {
namespace rollout {
namespace {

using cpu::dot_block;
using cpu::kRowBlock;
using cpu::pad16;
using cpu::to_f32_row;

constexpr int64_t kTile = 256;      // W2 rows per tile (scores of a tile stay in L1/L2)
static_assert(kTile % kPackRows == 0, "a tile must start a packed W2 group");
constexpr int64_t kMaxChunks = 64;  // partials per row of a vocabulary pass
constexpr int64_t kPrefetchRows = 16;  // weight rows prefetched ahead of the current block
// Per-row loops whose rows are a few KB of element math (gathers, GRU cells, m): a parallel region
// per beam level costs more than the work below this many rows (and much more on a loaded machine).
constexpr int64_t kSmallRowGrain = 16;

struct RowCtx {
  int64_t b;
  int32_t node;  // pool index of the beam node being expanded
  bool greedy;
  float temperature;
  uint64_t seed, offset;
  uint32_t stream;
};

class Engine {
 public:
  Engine(const RolloutParams& p, const ParallelFor& pf) : p_(p), pf_(pf) {
    B_ = p.B; H_ = p.H; G_ = p.G; E_ = p.E; V_ = p.V; G3_ = 3 * p.G;
    N_ = p.depth; P_ = p.pure_prefix; K_ = p.topk;
    M_ = int64_t(p.budget) + 1;
    Pmax_ = pool_capacity(p);
    Smax_ = state_capacity(p);
    Hp_ = pad16(H_); Gp_ = pad16(G_); Ep_ = pad16(E_); G3p_ = pad16(G3_);
    HG_ = E_ + G3_;
    wsize_ = p.wdtype == DType::F32 ? 4 : 2;
    need_gru_ = N_ > P_;
  }

  void run() {
    node_tok_.assign(B_ * Pmax_, -1);
    node_par_.assign(B_ * Pmax_, -1);
    node_q_.assign(B_ * Pmax_, 0.0f);
    node_acc_.assign(B_ * Pmax_, 0.0f);
    node_score_.assign(B_ * Pmax_, 0.0f);
    node_state_.assign(B_ * Pmax_, -1);
    num_.assign(B_, 1);
    num_states_.assign(B_, 0);
    if (p_.tree && p_.q_rows) tree_q_rows_.assign(B_ * Smax_ * V_, 0.0f);
    std::vector<std::pair<int64_t, int32_t>> frontier;  // (b, pool node) expanded at this depth
    for (int64_t b = 0; b < B_; ++b) {
      node_tok_[b * Pmax_] = p_.anchor[b];
      node_q_[b * Pmax_] = 1.0f;
      node_score_[b * Pmax_] = kSpineScore;  // the anchor starts the spine
      frontier.push_back({b, 0});
    }
    assign_states(frontier);
    if (need_gru_) {
      node_h_.assign(B_ * Smax_ * Gp_, 0.0f);
      node_hg_.assign(B_ * Smax_ * HG_, 0.0f);
      compute_zp();
      grow_states(frontier);
    }
    for (int32_t d = 0; d < N_ && !frontier.empty(); ++d) {
      const int32_t i = d + 1;  // proposal index of the children
      std::vector<int32_t> level_begin(num_.begin(), num_.end());
      append_children(frontier, score_level(frontier, i));
      if (i == N_) break;
      frontier = next_beam(level_begin);
      assign_states(frontier);
      if (need_gru_) grow_states(frontier);
    }
    emit();
  }

 private:
  const void* wrow(const void* base, int64_t row, int64_t ld, int64_t col = 0) const {
    return static_cast<const char*>(base) + (row * ld + col) * wsize_;
  }

  // Software prefetch of weight rows a few blocks ahead, so that the DRAM stream overlaps the
  // FMA work of the current block (the conversion would otherwise stall on every new row).
  void prefetch_rows(const void* W, int64_t row, int64_t n, int64_t ld, int64_t col = 0,
                     int64_t K = -1, int64_t nrows = -1) const {
    if (K < 0) K = ld;
    const int64_t end_row = nrows < 0 ? V_ : nrows;
    for (int64_t r = row; r < row + n && r < end_row; ++r) {
      const char* base = static_cast<const char*>(wrow(W, r, ld, col));
      for (int64_t off = 0; off < K * wsize_; off += 64) __builtin_prefetch(base + off);
    }
  }

  // Y[a, r] = dot(W[r, col : col + K], X[a]) for r < nrows; X rows padded to pad16(K). Every X
  // the engine passes holds weight-dtype values (hidden states, embedding rows, h: see
  // to_weight_precision), so for bf16 weights the vdpbf16ps kernel computes the same products.
  void gemv(const void* W, int64_t ldw, int64_t col, int64_t K, int64_t nrows, const float* X,
            int64_t A, float* Y, int64_t ldy) {
    const int64_t Kp = pad16(K);
    const int64_t nblocks = (nrows + kRowBlock - 1) / kRowBlock;
    if (cpu::scores_in_registers()) {  // weight rows read in their own dtype, no fp32 copy
      const cpu::PackedRows Xp = cpu::pack_rows(X, Kp, A, K, p_.wdtype);
      pf_(nblocks, 8, [&](int64_t b0, int64_t b1) {
        const int64_t r0 = b0 * kRowBlock, r1 = std::min(nrows, b1 * kRowBlock);
        cpu::score_rows(wrow(W, r0, ldw, col), p_.wdtype, ldw, r1 - r0, K, Xp, A, Y + r0, ldy, false);
      });
      return;
    }
    pf_(nblocks, 8, [&](int64_t b0, int64_t b1) {
      std::vector<float> wbuf(kRowBlock * Kp, 0.0f);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * kRowBlock;
        const int nr = int(std::min<int64_t>(kRowBlock, nrows - r0));
        prefetch_rows(W, r0 + kPrefetchRows, kRowBlock, ldw, col, K, nrows);
        for (int j = 0; j < nr; ++j) to_f32_row(wrow(W, r0 + j, ldw, col), p_.wdtype, K, Kp, &wbuf[j * Kp]);
        dot_block(wbuf.data(), nr, Kp, X, Kp, A, Y + r0, ldy);
      }
    });
  }

  // zp[b, i] = W1z · zz_i for the corrected proposals i in (P, N].
  void compute_zp() {
    const int64_t per = N_ - P_;
    std::vector<float> X(B_ * per * Hp_);
    pf_(B_ * per, 1, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t b = a / per, i = P_ + 1 + a % per;
        const int64_t slot = p_.shift_label ? i - 1 : i;
        const char* src = static_cast<const char*>(p_.hidden) +
                          (b * p_.hidden_stride_b + slot * p_.hidden_stride_s) * wsize_;
        to_f32_row(src, p_.wdtype, H_, Hp_, &X[a * Hp_]);
      }
    });
    zp_.assign(B_ * per * E_, 0.0f);
    gemv(p_.w1, H_ + G_, 0, H_, E_, X.data(), B_ * per, zp_.data(), E_);
  }
  const float* zp(int64_t b, int32_t i) const { return &zp_[(b * (N_ - P_) + (i - P_ - 1)) * E_]; }

  int64_t node(int64_t b, int32_t n) const { return b * Pmax_ + n; }
  // State slot (GRU state, q row) of an expanded node, request-global.
  int64_t state(int64_t b, int32_t n) const { return b * Smax_ + node_state_[node(b, n)]; }

  void assign_states(const std::vector<std::pair<int64_t, int32_t>>& nodes) {
    for (const auto& [b, n] : nodes) node_state_[node(b, n)] = num_states_[b]++;
  }

  // GRU cell for the given new nodes (their parents' states are ready), then [W1h | W_hh] · h.
  void grow_states(const std::vector<std::pair<int64_t, int32_t>>& nodes) {
    const int64_t A = int64_t(nodes.size());
    std::vector<float> gi(A * G3p_, 0.0f);
    auto token_ok = [&](int64_t t) { return t >= 0 && t < V_; };
    if (p_.gru_table) {
      pf_(A, kSmallRowGrain, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
          const int64_t t = node_tok_[node(nodes[a].first, nodes[a].second)];
          if (token_ok(t)) to_f32_row(wrow(p_.gru_table, t, G3_), p_.wdtype, G3_, G3p_, &gi[a * G3p_]);
        }
      });
    } else {
      std::vector<float> X(A * Hp_, 0.0f);
      pf_(A, kSmallRowGrain, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
          const int64_t t = node_tok_[node(nodes[a].first, nodes[a].second)];
          if (token_ok(t)) to_f32_row(wrow(p_.embedding, t, H_), p_.wdtype, H_, Hp_, &X[a * Hp_]);
        }
      });
      gemv(p_.w_ih, H_, 0, H_, G3_, X.data(), A, gi.data(), G3p_);
    }
    std::vector<float> Xh(A * Gp_, 0.0f);
    pf_(A, kSmallRowGrain, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t b = nodes[a].first;
        const int32_t par = node_par_[node(b, nodes[a].second)];
        const float* hp = par >= 0 ? &node_h_[state(b, par) * Gp_] : nullptr;
        const float* gh = par >= 0 ? &node_hg_[state(b, par) * HG_ + E_] : nullptr;
        const float* g = &gi[a * G3p_];
        float* h = &node_h_[state(b, nodes[a].second) * Gp_];
        cpu::gru_cells(g, gh, hp, G_, p_.wdtype, h);
        std::copy(h, h + Gp_, &Xh[a * Gp_]);
      }
    });
    std::vector<float> Y(A * HG_);
    gemv(p_.w1, H_ + G_, H_, G_, E_, Xh.data(), A, Y.data(), HG_);  // W1h · h
    gemv(p_.w_hh, G_, 0, G_, G3_, Xh.data(), A, Y.data() + E_, HG_);  // W_hh · h
    for (int64_t a = 0; a < A; ++a)
      std::copy(&Y[a * HG_], &Y[(a + 1) * HG_], &node_hg_[state(nodes[a].first, nodes[a].second) * HG_]);
  }

  template <typename Tb>
  const Tb* base_row(int64_t b, int32_t i) const {
    return static_cast<const Tb*>(p_.base) + b * p_.base_stride_b + int64_t(i - 1) * p_.base_stride_n;
  }

  // Fold a tile of scores s[0, n), n <= kTile, with vocabulary ids (v0 + j, or ids[j]) into the row's state;
  // `base` (row-aligned with s, or null when already added): s = base + s (add) or base (!add).
  void consume(TopK& st, float* s, int64_t n, int64_t v0, const int32_t* ids, const RowCtx& c,
               float* qrow, const void* base = nullptr, bool add = true) const {
    const float tmax = cpu::finish_scores(s, n, base, p_.base_dtype, add, c.greedy ? 0.0f : c.temperature);
    if (qrow) {
      for (int64_t j = 0; j < n; ++j) qrow[ids ? ids[j] : v0 + j] = s[j];
    }
    if (!(tmax > -det::kInf)) return;
    softmax_fold(st, tmax, cpu::sum_exp(s, n, tmax));
    const int k = K_;
    auto id = [&](int64_t j) { return int32_t(ids ? ids[j] : v0 + j); };
    if (c.greedy) {
      if (k == 1 && !ids) {  // ascending ids: the tile's first maximum is its only candidate
        if (st.n == 0 || tmax > st.key[0]) {
          const int32_t v = id(cpu::find_first(s, n, tmax));
          topk_insert(st, 1, tmax, tmax, v);
        }
        return;
      }
      if (st.n == k && !(tmax >= st.key[k - 1])) return;
      for (int64_t j = 0; j < n; ++j)
        if (s[j] > -det::kInf && (st.n < k || key_better(s[j], id(j), st.key[k - 1], st.idx[k - 1])))
          topk_insert(st, k, s[j], s[j], id(j));
      return;
    }
    // Gumbel-top-k. No key exceeds its score by kGumbelMaxNoise, so a tile whose best score
    // cannot reach the k-th key holds no entrant. Otherwise the whole tile's keys are computed in
    // one vectorised pass (rollout_gumbel.h: the same bits as det::gumbel_key) and the selection
    // only compares: at T = 1 nearly every element would pass a per-element bound, so computing
    // all keys is cheaper than branching on each.
    if (st.n == k && det::add(tmax, kGumbelMaxNoise) < st.key[k - 1]) return;
    float keys[kTile];
    cpu::gumbel_keys(s, n, uint32_t(v0), ids, c.seed, c.offset, c.stream, keys);
    for (int64_t j = 0; j < n; ++j)
      if (s[j] > -det::kInf && (st.n < k || key_better(keys[j], id(j), st.key[k - 1], st.idx[k - 1])))
        topk_insert(st, k, keys[j], s[j], id(j));
  }

  // One vocabulary pass for every frontier row of the level; returns the merged state per row.
  std::vector<TopK> score_level(const std::vector<std::pair<int64_t, int32_t>>& frontier, int32_t i) {
    const int64_t A = int64_t(frontier.size());
    const bool corrected = i > P_;
    std::vector<RowCtx> ctx(A);
    for (int64_t a = 0; a < A; ++a) {
      const int64_t b = frontier[a].first;
      const float T = p_.temperature ? p_.temperature[b] : 0.0f;
      ctx[a] = RowCtx{b, frontier[a].second, !(T > 0.0f), T,
                      p_.seed ? uint64_t(p_.seed[b]) : 0, p_.offset ? uint64_t(p_.offset[b]) : 0,
                      noise_stream(p_.tree, i, frontier[a].second)};
    }
    std::vector<float> m;
    if (corrected) {
      m.assign(A * Ep_, 0.0f);
      pf_(A, kSmallRowGrain, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
          const float* z = zp(ctx[a].b, i);
          const float* hp = &node_hg_[state(ctx[a].b, ctx[a].node) * HG_];
          for (int64_t e = 0; e < E_; ++e) m[a * Ep_ + e] = head_activation(det::add(z[e], hp[e]), p_.wdtype);
        }
      });
    }
    const bool in_regs = cpu::scores_in_registers();
    cpu::PackedRows mp;  // m packed for the in-register kernels (bf16 pairs: exact, m is bf16)
    if (corrected && in_regs) mp = cpu::pack_rows(m.data(), Ep_, A, E_, p_.wdtype);
    const bool packed = mp.bf16_pairs && p_.w2_packed != nullptr;  // see pack_w2_bf16
    // q rows: the chain writes the output row of proposal i, the tree its expanded node's slot
    auto qrow = [&](int64_t a) -> float* {
      if (!p_.q_rows) return nullptr;
      return p_.tree ? &tree_q_rows_[state(ctx[a].b, ctx[a].node) * V_]
                     : p_.q_rows + (ctx[a].b * N_ + (i - 1)) * V_;
    };
    const bool shortlist = corrected && p_.shortlist && !p_.tree;
    std::vector<TopK> rows(A);
    for (auto& r : rows) topk_init(r);

    if (shortlist) {
      // Each request has its own candidate columns: the weight rows differ per row.
      const int64_t Kc = p_.num_candidates;
      for (int64_t a = 0; a < A; ++a)
        if (float* q = qrow(a)) std::fill(q, q + V_, -det::kInf);
      const int64_t ntile = (Kc + kTile - 1) / kTile;
      std::vector<TopK> part(A * ntile);
      pf_(A * ntile, 1, [&](int64_t t0, int64_t t1) {
        std::vector<float> wbuf(kRowBlock * Ep_, 0.0f), s(kTile);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t a = t / ntile, j0 = (t % ntile) * kTile, n = std::min(kTile, Kc - j0);
          const int64_t b = ctx[a].b;
          const int32_t* ids = p_.shortlist + b * Kc + j0;
          dispatch_dtype(p_.base_dtype, [&](auto tag) {
            using Tb = decltype(tag);
            const Tb* base = base_row<Tb>(b, i);
            for (int64_t j = 0; j < n; j += kRowBlock) {
              const int nr = int(std::min<int64_t>(kRowBlock, n - j));
              for (int r = 0; r < nr; ++r) to_f32_row(wrow(p_.w2, ids[j + r], E_), p_.wdtype, E_, Ep_, &wbuf[r * Ep_]);
              dot_block(wbuf.data(), nr, Ep_, &m[a * Ep_], Ep_, 1, &s[j], kTile);
            }
            for (int64_t j = 0; j < n; ++j) s[j] = det::add(to_float(base[ids[j]]), s[j]);
          });
          TopK& st = part[t];
          topk_init(st);
          consume(st, s.data(), n, 0, ids, ctx[a], qrow(a));
        }
      });
      for (int64_t a = 0; a < A; ++a)
        for (int64_t t = 0; t < ntile; ++t) topk_merge(rows[a], part[a * ntile + t], K_);
    } else {
      const int64_t ntile = (V_ + kTile - 1) / kTile;
      const int64_t nchunks = std::min(ntile, kMaxChunks);
      std::vector<TopK> part(nchunks * A);
      pf_(nchunks, 1, [&](int64_t c0, int64_t c1) {
        // tile scratch [A][ld]: small V keeps it small; whole packed groups of 16 are written
        const int64_t ld = (std::min(kTile, V_) + kPackRows - 1) / kPackRows * kPackRows;
        std::vector<float> wbuf(kRowBlock * Ep_, 0.0f), tile(A * ld);
        for (int64_t c = c0; c < c1; ++c) {
          TopK* st = &part[c * A];
          for (int64_t a = 0; a < A; ++a) topk_init(st[a]);
          const int64_t t_begin = c * ntile / nchunks, t_end = (c + 1) * ntile / nchunks;
          for (int64_t t = t_begin; t < t_end; ++t) {
            const int64_t v0 = t * kTile, n = std::min(kTile, V_ - v0);
            if (corrected && packed) {  // kTile is a multiple of 16: v0 starts a group
              const int64_t J = packed_w2_pairs(E_);
              cpu::score_groups_packed(p_.w2_packed + (v0 / kPackRows) * J * kPackRows, J,
                                       (n + kPackRows - 1) / kPackRows, mp, A, tile.data(), ld);
            } else if (corrected && in_regs) {
              cpu::score_rows(wrow(p_.w2, v0, E_), p_.wdtype, E_, n, E_, mp, A, tile.data(), ld, /*stream=*/true);
            } else if (corrected) {
              for (int64_t j = 0; j < n; j += kRowBlock) {
                const int nr = int(std::min<int64_t>(kRowBlock, n - j));
                prefetch_rows(p_.w2, v0 + j + kPrefetchRows, kRowBlock, E_);
                for (int r = 0; r < nr; ++r) to_f32_row(wrow(p_.w2, v0 + j + r, E_), p_.wdtype, E_, Ep_, &wbuf[r * Ep_]);
                dot_block(wbuf.data(), nr, Ep_, m.data(), Ep_, A, &tile[j], ld);
              }
            }
            for (int64_t a = 0; a < A; ++a) {
              float* s = &tile[a * ld];
              const int64_t bsz = p_.base_dtype == DType::F32 ? 4 : 2;
              const char* base = static_cast<const char*>(p_.base) +
                  (ctx[a].b * p_.base_stride_b + int64_t(i - 1) * p_.base_stride_n + v0) * bsz;
              consume(st[a], s, n, v0, nullptr, ctx[a], qrow(a), base, corrected);
            }
          }
        }
      });
      for (int64_t a = 0; a < A; ++a)
        for (int64_t c = 0; c < nchunks; ++c) topk_merge(rows[a], part[c * A + a], K_);
    }

    if (p_.q_rows) {  // raw scaled scores -> probabilities
      pf_(A, 1, [&](int64_t a0, int64_t a1) {
        for (int64_t a = a0; a < a1; ++a) {
          float* q = qrow(a);
          const TopK& st = rows[a];
          if (st.max > -det::kInf)
            cpu::softmax_row(q, V_, st.max, st.sum);  // det::div(det::exp(q - max), sum), vectorised
          else
            std::fill(q, q + V_, 0.0f);
        }
      });
    }
    return rows;
  }

  // The children of every expanded row join their request's pool, in (row, rank) order.
  void append_children(const std::vector<std::pair<int64_t, int32_t>>& frontier,
                       const std::vector<TopK>& rows) {
    for (size_t a = 0; a < frontier.size(); ++a) {
      const auto [b, par] = frontier[a];
      const TopK& st = rows[a];
      float lq[kMaxTopK], acc[kMaxTopK], score[kMaxTopK];
      for (int j = 0; j < st.n; ++j) lq[j] = log_q(st, st.val[j]);
      const bool sampled = p_.temperature && p_.temperature[b] > 0.0f;
      child_scores(node_acc_[node(b, par)], node_score_[node(b, par)], sampled, lq, st.n, acc, score);
      for (int j = 0; j < st.n; ++j) {
        const int64_t n = node(b, num_[b]++);
        node_tok_[n] = st.idx[j];
        node_par_[n] = par;
        node_q_[n] = det::exp(lq[j]);
        node_acc_[n] = acc[j];
        node_score_[n] = score[j];
      }
    }
  }

  // The beam of the next depth: per request the best `beam_width` nodes of the newest depth
  // (pool range [level_begin[b], num_[b])), in pool order.
  std::vector<std::pair<int64_t, int32_t>> next_beam(const std::vector<int32_t>& level_begin) const {
    std::vector<std::pair<int64_t, int32_t>> next;
    const int32_t beam = int32_t(beam_width(p_));
    for (int64_t b = 0; b < B_; ++b) {
      const float* score = &node_score_[node(b, 0)];
      const int32_t end = int32_t(num_[b]);
      for (int32_t c = level_begin[b]; c < end; ++c)
        if (rank_within(score, level_begin[b], end, c, beam) < beam) next.push_back({b, c});
    }
    return next;
  }

  void emit() {
    if (!p_.tree) {  // chain: pool node i is proposal i
      for (int64_t b = 0; b < B_; ++b)
        emit_chain(&node_tok_[node(b, 0)], &node_q_[node(b, 0)], int32_t(num_[b]), N_,
                   p_.tokens + b * N_, p_.q + b * N_);
      return;
    }
    const int32_t M = int32_t(M_);
    pf_(B_, 1, [&](int64_t b0, int64_t b1) {
      std::vector<uint8_t> keep;
      std::vector<int32_t> out_id, source(M_);
      for (int64_t b = b0; b < b1; ++b) {
        const int32_t n = int32_t(num_[b]);
        const float* score = &node_score_[node(b, 0)];
        keep.assign(size_t(n), 0);
        out_id.assign(size_t(n), -1);
        for (int32_t c = 0; c < n; ++c) keep[c] = rank_within(score, 0, n, c, M) < M;
        p_.num_nodes[b] = emit_tree(&node_tok_[node(b, 0)], &node_par_[node(b, 0)], &node_q_[node(b, 0)],
                                    keep.data(), n, M, out_id.data(), p_.tokens + b * M_,
                                    p_.parents + b * M_, p_.q + b * M_, source.data());
        if (!p_.q_rows) continue;
        for (int64_t j = 0; j < M_; ++j) {
          float* dst = p_.q_rows + (b * M_ + j) * V_;
          const int32_t c = source[j];
          if (c >= 0 && node_state_[node(b, c)] >= 0) {
            const float* src = &tree_q_rows_[state(b, c) * V_];
            std::copy(src, src + V_, dst);
          } else {
            std::fill(dst, dst + V_, 0.0f);
          }
        }
      }
    });
  }

  const RolloutParams& p_;
  const ParallelFor& pf_;
  int64_t B_, H_, G_, E_, V_, G3_, M_, Pmax_, Smax_, Hp_, Gp_, Ep_, G3p_, HG_, wsize_;
  int32_t N_, P_, K_;
  bool need_gru_;
  // Per request: the candidate pool [B, Pmax] (node_*; node_state_ = state slot of an expanded
  // node or -1), the states of expanded nodes [B, Smax] (GRU h, [W1h | W_hh] h, tree q rows).
  std::vector<float> zp_, node_h_, node_hg_, node_q_, node_acc_, node_score_, tree_q_rows_;
  std::vector<int64_t> node_tok_, num_, num_states_;
  std::vector<int32_t> node_par_, node_state_;
};

}  // namespace

void rollout_cpu(const RolloutParams& p, const ParallelFor& parallel_for) {
  ParallelFor pf = parallel_for;
  if (!pf) pf = [](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) { if (n > 0) fn(0, n); };
  Engine(p, pf).run();
}

}  // namespace rollout
}  // namespace domino
