"""Reference of ``torch.ops.domino.verify`` (contract: ``csrc/include/domino/verify.h``).

A per-request Python walk over the tree, written for clarity. The processed target row is the
exact integer mass vector ``w`` of ``domino::sample``'s filter (temperature, top-k, top-p), and
every decision is made with the same integer / float32 / float64 operations as the kernels, so
tokens match bit for bit under the same seeds. Invalid requests get ``accept_len = -1`` and -1
rows (the kernels' defined result; the CPU op raises instead).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from . import philox
from .numerics import det_exp, fixed_mass
from .sampling import kept_mask

GREEDY, TARGET_ONLY, REJECTION, REJECTION_NO_REPLACEMENT = 0, 1, 2, 3
FIXED_CAP = 2 ** 62
MASK64 = (1 << 64) - 1


def random_u64(seed: int, offset: int, stream: int) -> int:
    w = philox.raw_words(seed, offset, stream, np.array([0, 1]))
    return (int(w[0]) << 32) | int(w[1])


def uniform52(bits: int) -> float:
    return float(bits >> 12) * 2.0 ** -52 + 2.0 ** -53


def uniform_below(bits: int, total: int) -> int:
    return (bits * total) >> 64


def to_fixed(q: np.float32, scale: float) -> int:
    if not q > 0:
        return 0
    x = (float(q) if q < 1 else 1.0) * scale
    if not x < FIXED_CAP:
        return FIXED_CAP
    return int(x)


def target_masses(row: np.ndarray, temperature: float, top_k: int, top_p: float):
    """Fixed-point masses ``w`` (Python ints in a uint64 array) of the processed target, or None
    when the row is invalid."""
    l = row.astype(np.float32)
    if np.isnan(l).any() or np.isposinf(l).any() or not (l > -np.inf).any():
        return None
    with np.errstate(all="ignore"):
        s = (l * (np.float32(1.0) / np.float32(temperature))).astype(np.float32)  # 1/T once
    m = s.max()
    if not np.isfinite(m):
        return None
    keep = kept_mask(s, top_k, top_p, 0.0)
    with np.errstate(all="ignore"):
        w = fixed_mass(det_exp((s - m).astype(np.float32)))
    return np.where(keep, w, np.uint64(0))


def inverse_cdf(r: int, masses) -> int:
    """Smallest index whose inclusive prefix sum of ``masses`` exceeds ``r``."""
    cum = np.cumsum(np.asarray(masses, dtype=np.uint64), dtype=np.uint64)
    return int(np.searchsorted(cum, np.uint64(r), side="right"))


def verify_request(tokens, parents, n, logits, temperature, top_k, top_p, q_rows, q_tokens,
                   seed, offset, rule):
    """Returns (accept_len, path list, emitted list) or None for an invalid request."""
    T, V = logits.shape[0], logits.shape[1]
    if not 1 <= n <= T or np.isnan(temperature) or temperature < 0 or top_k < 0:
        return None
    if np.isnan(top_p) or not 0 < top_p <= 1:
        return None
    for i in range(1, n):
        if not 0 <= parents[i] < i or not 0 <= tokens[i] < V:
            return None
    greedy = temperature == 0 or rule == GREEDY
    rule = GREEDY if greedy else rule
    if rule >= REJECTION:
        for i in range(1, n):
            q = q_rows[parents[i], tokens[i]] if q_rows is not None else q_tokens[i]
            if not (q > 0 and np.isfinite(q)):
                return None
    node, path, emitted = 0, [0], []
    while True:
        kids = [i for i in range(node + 1, n) if parents[i] == node]
        kid_tokens = [int(tokens[c]) for c in kids]
        first = {}
        for l, t in enumerate(kid_tokens):
            first.setdefault(t, l)
        row = logits[node].astype(np.float32)
        nxt, out = None, None
        if rule == GREEDY:
            if np.isnan(row).any() or np.isposinf(row).any() or not (row > -np.inf).any():
                return None
            out = int(np.argmax(row))
            if out in first:
                nxt = kids[first[out]]
        else:
            w = target_masses(row, temperature, top_k, top_p)
            if w is None:
                return None
            W = int(w.sum(dtype=np.uint64))
            if rule == TARGET_ONLY:
                r = uniform_below(random_u64(seed, offset, philox.stream_id(
                    philox.VERIFY_RESIDUAL, node)), W)
                child_mass = sum(int(w[t]) for t in first)
                if r < child_mass:
                    for t in sorted(first):  # child tokens first, ascending
                        if r < int(w[t]):
                            nxt = kids[first[t]]
                            break
                        r -= int(w[t])
                else:
                    rest = w.copy()
                    rest[list(first)] = 0
                    out = inverse_cdf(r - child_mass, rest)
            else:
                no_repl = rule == REJECTION_NO_REPLACEMENT
                if q_rows is not None:
                    q = q_rows[node].astype(np.float32)
                else:
                    q = np.zeros(V, dtype=np.float32)
                    for t, l in first.items():
                        q[t] = q_tokens[kids[l]]
                # First sibling index of each vocab entry (len(kids) when none).
                first_of = np.full(V, len(kids), dtype=np.int64)
                for t, l in first.items():
                    first_of[t] = l
                R = [int(x) for x in w]  # the current residual R_j, as Python ints
                M, S = W, 0.0
                for j, c in enumerate(kids):
                    x = kid_tokens[j]
                    qx = np.float32(q_rows[node, x] if q_rows is not None else q_tokens[c])
                    scale = float(M)
                    if no_repl:
                        scale = float(M) / (1.0 - S) if 1.0 - S > 0 else float("inf")
                    Qx = 0 if (no_repl and first[x] < j) else to_fixed(qx, scale)
                    u = uniform52(random_u64(seed, offset, philox.stream_id(philox.VERIFY_COIN, c)))
                    if u * float(Qx) < float(R[x]):
                        nxt = c
                        break
                    for v in range(V):  # R_{j+1} = R_j - min(R_j, Q_j)
                        if R[v] == 0 or (no_repl and first_of[v] < j):
                            continue
                        Q = to_fixed(q[v], scale)
                        R[v] -= min(R[v], Q)
                    M = sum(R)
                    S = S + float(qx)
                if nxt is None:
                    bits = random_u64(seed, offset, philox.stream_id(philox.VERIFY_RESIDUAL, node))
                    if M == 0:
                        R, M = [int(x) for x in w], W
                    out = inverse_cdf(uniform_below(bits, M), R)
        if nxt is None:
            emitted.append(out)
            return len(path) - 1, path, emitted
        path.append(nxt)
        emitted.append(int(tokens[nxt]))
        node = nxt


def verify(draft_tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor,
           logits: torch.Tensor, temperature: torch.Tensor, top_k: Optional[torch.Tensor],
           top_p: Optional[torch.Tensor], draft_probs: Optional[torch.Tensor],
           draft_token_probs: Optional[torch.Tensor], seed: torch.Tensor, offset: torch.Tensor,
           rule: int):
    """Same arguments as ``torch.ops.domino.verify``; same outputs, on ``draft_tokens``' device."""
    B, T = draft_tokens.shape
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    tok, par, nn = cpu(draft_tokens).numpy(), cpu(parents).numpy(), cpu(num_nodes).numpy()
    lg = cpu(logits).float().numpy()
    temps = cpu(temperature).numpy()
    ks = np.zeros(B, np.int64) if top_k is None else cpu(top_k).numpy()
    ps = np.ones(B, np.float32) if top_p is None else cpu(top_p).numpy()
    use_q = rule >= REJECTION
    qr = cpu(draft_probs).numpy() if (use_q and draft_probs is not None) else None
    qt = cpu(draft_token_probs).numpy() if (use_q and draft_token_probs is not None) else None
    seeds, offs = cpu(seed).tolist(), cpu(offset).tolist()
    acc = torch.full((B,), -1, dtype=torch.int64)
    path_t = torch.full((B, T), -1, dtype=torch.int64)
    emit_t = torch.full((B, T), -1, dtype=torch.int64)
    for b in range(B):
        res = verify_request(tok[b], par[b], int(nn[b]), lg[b], np.float32(temps[b]), int(ks[b]),
                             np.float32(ps[b]), None if qr is None else qr[b],
                             None if qt is None else qt[b], int(seeds[b]), int(offs[b]), rule)
        if res is None:
            continue
        a, path, emitted = res
        acc[b] = a
        path_t[b, :len(path)] = torch.tensor(path)
        emit_t[b, :len(emitted)] = torch.tensor(emitted)
    dev = draft_tokens.device
    return acc.to(dev), path_t.to(dev), emit_t.to(dev)
