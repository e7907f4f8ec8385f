"""Reference of the Domino draft rollout (contract: ``csrc/include/domino/rollout.h``; spec §3.3).

Three forms, written for clarity:

* :func:`rollout` is the O(N) loop: prime the GRU with the anchor, feed each realised proposal,
  score proposal ``i`` as ``base_i + W2 silu(W1 [zz_i ; h])`` (``base_i`` alone for ``i <= P``).
* :func:`rollout_quadratic` is the SpecForge training-side sampler: for every position it rebuilds
  the whole block of ids (anchor, drafts so far, mask ids), re-runs ``torch.nn.GRU`` over all of
  it and the full ``embed_proj`` head over every slot, and reads one row (``t - 1`` with
  shift_label, ``t`` without). O(N^2) GRU work, greedy only; it must agree token for token.
* :func:`tree_rollout` is the dynamic tree: per depth the ``topk`` best nodes of the newest depth
  (the beam) are expanded into their top-k children, and the ``budget`` best of all generated
  nodes are returned (scores and order in ``docs/rollout.md`` and ``rollout.h``).

Sampled rows draw Gumbel-max noise from the package's Philox contract (``philox.py``), so the
kernels and this reference pick the same tokens for the same seeds.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import philox
from .numerics import det_exp, det_log

GUMBEL_MAX_NOISE = np.float32(16.7)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


def _storage(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Activations that feed a weight GEMV (the head's hidden m, the GRU state h) are stored in the
    weight dtype, as the PyTorch modules compute them with bf16 / fp16 weights (contract:
    ``to_weight_precision`` in rollout.h)."""
    return x.to(dtype).float() if dtype in (torch.bfloat16, torch.float16) else x


def gru_cell(gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """PyTorch GRU cell without biases; ``gi = W_ih x`` ([3G]), gates ordered (r, z, n)."""
    gh = w_hh @ h
    i_r, i_z, i_n = gi.chunk(3)
    h_r, h_z, h_n = gh.chunk(3)
    r = torch.sigmoid(i_r + h_r)
    u = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - u) * n + u * h


def _gru_input(token: int, embedding, w_ih, gru_table) -> torch.Tensor:
    if not 0 <= token < embedding.shape[0]:
        return torch.zeros(w_ih.shape[0])  # defined result for an invalid id: zero input
    if gru_table is not None:
        return gru_table[token]
    return w_ih @ embedding[token]


def _pick(logits: torch.Tensor, k: int, temperature: float, seed: int, offset: int, stream: int):
    """Top-k children of one score row: list of (token, log q). Greedy (T <= 0): largest scores,
    ties to the lowest id, log q under T = 1. Sampled: largest Gumbel keys of scores / T."""
    logits = torch.where(torch.isnan(logits), torch.full_like(logits, -float("inf")), logits)
    greedy = not temperature > 0
    scaled = logits if greedy else (logits / np.float32(temperature)).to(torch.float32)
    finite = scaled > -float("inf")
    if not bool(finite.any()):
        return []
    logp = torch.log_softmax(scaled.double(), dim=0)
    s = scaled.numpy()
    if greedy:
        keys = s
    else:
        ids = np.arange(s.shape[0])
        u = philox.uniforms(seed, offset, stream, ids)
        with np.errstate(all="ignore"):
            keys = (s - det_log(-det_log(u))).astype(np.float32)
        keys = np.where(finite.numpy(), keys, np.float32(-np.inf))
    order = np.lexsort((np.arange(keys.shape[0]), -keys.astype(np.float64)))  # key desc, id asc
    order = [int(v) for v in order[:k] if keys[v] > -np.inf]
    return [(v, np.float32(logp[v].item())) for v in order]


def _q_row(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The draft distribution of a score row: softmax(scores / T) (T = 1 greedy), NaN as -inf,
    zeros when every score is -inf."""
    clean = torch.where(torch.isnan(logits), torch.full_like(logits, -float("inf")), logits)
    scaled = clean if not temperature > 0 else clean / np.float32(temperature)
    if not bool((scaled > -float("inf")).any()):
        return torch.zeros_like(logits)
    return torch.softmax(scaled.double(), 0).float()


def _zz(hidden_b: torch.Tensor, i: int, shift_label: bool) -> torch.Tensor:
    return hidden_b[i - 1] if shift_label else hidden_b[i]


def _correction(w1, w2, zz, h, dtype=torch.float32):
    return w2 @ _storage(torch.nn.functional.silu(w1 @ torch.cat([zz, h])), dtype)


def shortlist(base_logits: torch.Tensor, num_proposals: int, pure_prefix_len: int, k: int):
    """Per-request candidate ids [B, k]: top-k of max over corrected proposals of the base logits,
    ties to the lowest id. None when the shortlist is off (k == 0 or k >= V or nothing corrected)."""
    V = base_logits.shape[-1]
    P = min(pure_prefix_len, num_proposals)
    if k <= 0 or k >= V or num_proposals <= P:
        return None
    best = _f32(base_logits[:, P:num_proposals]).amax(dim=1)
    return torch.sort(best, dim=1, descending=True, stable=True).indices[:, :k]


def rollout(hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table=None, *,
            num_proposals: int, shift_label: bool = True, pure_prefix_len: int = 1,
            temperature: Optional[torch.Tensor] = None, seed: Optional[torch.Tensor] = None,
            offset: Optional[torch.Tensor] = None, return_q_rows: bool = False,
            candidates: int = 0):
    """O(N) reference of ``domino_rollout``: returns (tokens [B, N], q [B, N], q_rows)."""
    wdtype = w2.dtype
    hidden, base = _f32(hidden), _f32(base_logits)
    w_ih, w_hh, w1, w2, emb = map(_f32, (w_ih, w_hh, w1, w2, embedding))
    table = None if gru_table is None else _f32(gru_table)
    B, N, V = hidden.shape[0], num_proposals, w2.shape[0]
    G = w_hh.shape[1]
    P = min(pure_prefix_len, N)
    cand = shortlist(base, N, P, candidates)
    tokens = torch.full((B, N), -1, dtype=torch.int64)
    q = torch.zeros(B, N)
    q_rows = torch.zeros(B, N, V) if return_q_rows else torch.zeros(0)
    for b in range(B):
        T = 0.0 if temperature is None else float(temperature[b])
        sd = 0 if seed is None else int(seed[b])
        off = 0 if offset is None else int(offset[b])
        h = torch.zeros(G)
        h = _storage(gru_cell(_gru_input(int(anchor[b]), emb, w_ih, table), h, w_hh), wdtype)
        for i in range(1, N + 1):
            logits = base[b, i - 1].clone()
            if i > P:
                logits = logits + _correction(w1, w2, _zz(hidden[b], i, shift_label), h, wdtype)
                if cand is not None:
                    keep = torch.zeros(V, dtype=torch.bool)
                    keep[cand[b]] = True
                    logits = torch.where(keep, logits, torch.full_like(logits, -float("inf")))
            picked = _pick(logits, 1, T, sd, off, philox.stream_id(philox.DRAFT_CHAIN, i))
            if return_q_rows:
                q_rows[b, i - 1] = _q_row(logits, T)
            if not picked:
                break
            y, lq = picked[0]
            tokens[b, i - 1] = y
            q[b, i - 1] = float(np.exp(np.float64(lq)))
            if i < N:
                h = _storage(gru_cell(_gru_input(y, emb, w_ih, table), h, w_hh), wdtype)
    return tokens, q, q_rows


def rollout_quadratic(hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, *,
                      num_proposals: int, shift_label: bool = True, pure_prefix_len: int = 1,
                      mask_id: int = 0):
    """SpecForge-style O(N^2) greedy sampler (``_sample_draft_tokens``): per position, re-embed
    the whole block buffer, re-run ``nn.GRU`` and the full head over every slot, read one row."""
    hidden, base = _f32(hidden), _f32(base_logits)
    w_ih, w_hh, w1, w2, emb = map(_f32, (w_ih, w_hh, w1, w2, embedding))
    B, S, H = hidden.shape
    G, E, V = w_hh.shape[1], w1.shape[0], w2.shape[0]
    gru = torch.nn.GRU(H, G, num_layers=1, bias=False, batch_first=True)
    head = torch.nn.Sequential(torch.nn.Linear(H + G, E, bias=False), torch.nn.SiLU(),
                               torch.nn.Linear(E, V, bias=False))
    with torch.no_grad():
        gru.weight_ih_l0.copy_(w_ih)
        gru.weight_hh_l0.copy_(w_hh)
        head[0].weight.copy_(w1)
        head[2].weight.copy_(w2)
    P = min(pure_prefix_len, num_proposals)
    tokens = torch.full((B, num_proposals), -1, dtype=torch.int64)
    with torch.no_grad():
        for b in range(B):
            ids = torch.full((S,), mask_id, dtype=torch.int64)
            ids[0] = int(anchor[b])
            for t in range(1, num_proposals + 1):  # proposal t predicts position s + t
                out, _ = gru(emb[ids].unsqueeze(0))  # [1, S, G]: state after slots 0..j
                gru_out = out[0]
                if shift_label:  # slot j predicts s+j+1 from z_j and the state after slots 0..j
                    row, states = t - 1, gru_out
                else:  # slot j predicts s+j from z_j and the state after slots 0..j-1
                    row, states = t, torch.cat([gru_out.new_zeros(1, G), gru_out[:-1]])
                full = head(torch.cat([hidden[b], states], 1))  # the whole head, every slot
                logits = base[b, t - 1].clone()
                if t > P:
                    logits = logits + full[row]
                y = int(torch.argmax(logits))
                tokens[b, t - 1] = y
                if t < S:
                    ids[t] = y
    return tokens


def _sanitize(x) -> np.float32:
    x = np.float32(x)
    return np.float32(-np.inf) if np.isnan(x) else x


SPINE_SCORE = np.float32(np.inf)  # score of the anchor and of every spine node (rollout.h kSpineScore)


def child_scores(parent_acc, parent_score, sampled: bool, log_qs):
    """(acc, score) of the children (rank order) of an expanded node (contract: ``child_scores``
    in rollout.h). acc = path log-probability. The rank-0 child of a spine node (score
    SPINE_SCORE) is on the spine: SPINE_SCORE. Every other child: acc (greedy) or, sampled,
    acc(parent) + log(1 - q of the earlier siblings); clamped to the parent's acc, the parent's
    score and the previous off-spine sibling's score."""
    spine = parent_score == SPINE_SCORE
    prev, rem, out = min(np.float32(parent_score), np.float32(parent_acc)), np.float32(1), []
    with np.errstate(all="ignore"):
        for j, lq in enumerate(log_qs):
            lq = np.float32(lq)
            a = min(np.float32(parent_acc), _sanitize(np.float32(parent_acc) + lq))
            gain = np.float32(det_log(np.float32(rem if rem > 0 else 0))) if sampled else lq
            if spine and j == 0:
                sc = SPINE_SCORE
            else:
                sc = min(prev, _sanitize(np.float32(parent_acc) + gain))
                prev = sc
            out.append((a, sc))
            rem = np.float32(rem - np.float32(det_exp(lq)))
    return out


def best(scores, limit: int, begin: int = 0) -> list:
    """Pool indices of the best ``limit`` entries of ``scores[begin:]`` (larger score, then lower
    index), in index order."""
    idx = sorted(range(begin, len(scores)), key=lambda c: (-float(scores[c]), c))[:limit]
    return sorted(idx)


def tree_rollout(hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table=None, *,
                 shift_label: bool = True, pure_prefix_len: int = 1, topk: int, depth: int,
                 budget: int, temperature=None, seed=None, offset=None, return_q_rows: bool = False):
    """Reference of ``domino_tree_rollout``: (tokens, parents, q [B, budget+1], num_nodes [B],
    q_rows [B, budget+1, V] or [0])."""
    wdtype = w2.dtype
    hidden, base = _f32(hidden), _f32(base_logits)
    w_ih, w_hh, w1, w2, emb = map(_f32, (w_ih, w_hh, w1, w2, embedding))
    table = None if gru_table is None else _f32(gru_table)
    B, G, M, V = hidden.shape[0], w_hh.shape[1], budget + 1, w2.shape[0]
    P = min(pure_prefix_len, depth)
    tokens = torch.full((B, M), -1, dtype=torch.int64)
    parents = torch.full((B, M), -1, dtype=torch.int64)
    q = torch.zeros(B, M)
    num_nodes = torch.zeros(B, dtype=torch.int64)
    q_rows = torch.zeros(B, M, V) if return_q_rows else torch.zeros(0)
    for b in range(B):
        T = 0.0 if temperature is None else float(temperature[b])
        sd = 0 if seed is None else int(seed[b])
        off = 0 if offset is None else int(offset[b])
        # the candidate pool, in generation order (node 0 = the anchor)
        tok, par, qs = [int(anchor[b])], [-1], [1.0]
        acc, score = [np.float32(0)], [SPINE_SCORE]  # the anchor starts the spine
        hs = {0: _storage(gru_cell(_gru_input(int(anchor[b]), emb, w_ih, table), torch.zeros(G), w_hh), wdtype)}
        rows = {}
        frontier = [0]
        for d in range(depth):
            i = d + 1
            level_begin = len(tok)
            for f in frontier:
                logits = base[b, i - 1].clone()
                if i > P:
                    logits = logits + _correction(w1, w2, _zz(hidden[b], i, shift_label), hs[f], wdtype)
                if return_q_rows:
                    rows[f] = _q_row(logits, T)
                picked = _pick(logits, topk, T, sd, off, philox.stream_id(philox.DRAFT_TREE, f))
                scored = child_scores(acc[f], score[f], T > 0, [lq for _, lq in picked])
                for (y, lq), (a, sc) in zip(picked, scored):
                    tok.append(y)
                    par.append(f)
                    qs.append(float(np.exp(np.float64(lq))))
                    acc.append(a)
                    score.append(sc)
            if i == depth:
                break
            frontier = best(score, topk, level_begin)
            if not frontier:
                break
            for f in frontier:
                hs[f] = _storage(gru_cell(_gru_input(tok[f], emb, w_ih, table), hs[par[f]], w_hh), wdtype)
        kept = best(score, M)
        out_id = {c: j for j, c in enumerate(kept)}
        n = len(kept)
        tokens[b, :n] = torch.tensor([tok[c] for c in kept])
        parents[b, :n] = torch.tensor([out_id[par[c]] if c else -1 for c in kept])
        q[b, :n] = torch.tensor([qs[c] for c in kept], dtype=torch.float32)
        num_nodes[b] = n
        if return_q_rows:
            for j, c in enumerate(kept):
                if c in rows:
                    q_rows[b, j] = rows[c]
    return tokens, parents, q, num_nodes, q_rows
