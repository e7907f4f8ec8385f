"""The kernel entry points the model layer calls, in one place.

Each name is the ``domino_kernels.ops`` wrapper of ``torch.ops.domino.<op>`` (attention:
``append_kv``, ``tree_attention``, ``tree_info``; ``verify``, ``chain_parents``; ``sample``). Until
the rollout family has landed, a plain-PyTorch stand-in
with the same signature and semantics (written below, vectorised over the batch where it is cheap
to do so) keeps the decode loop runnable. The stand-ins are temporary: once every op has landed
they are deleted and the ops do the work.

Layout conventions shared by every op (see docs/decode.md):
  * paged KV cache: ``[num_pages, page_size, Hkv, D]``, ``block_table [B, max_pages]`` int32,
    ``kv_lens [B]`` int32 = committed tokens, ``q_cu_lens [B+1]`` int32 over the new tokens;
  * trees: ``parents [B, T]`` with ``parents[:, 0] = -1`` and ``parents[b, i] < i``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

import domino_kernels.ops as _ops


def _have(op: str) -> bool:
    return hasattr(torch.ops.domino, op) and hasattr(_ops, op)


class _HeadWeights(NamedTuple):
    """GRU ``w_ih [3G, H]``, ``w_hh [3G, G]``; ``w1 = embed_proj.0 [E, H+G]``; ``w2 = embed_proj.2 [V, E]``."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor


DominoHeadWeights = getattr(_ops, "DominoHeadWeights", _HeadWeights)
HEAD_FIELDS = ("w_ih", "w_hh", "w1", "w2")


def map_head(fn, head):
    """``head`` with ``fn`` applied to each of its four weights."""
    return DominoHeadWeights(**{k: fn(getattr(head, k)) for k in HEAD_FIELDS})


# ----------------------------------------------------------------------------------------------
# Domino head rollout (spec §3.3): chain and tree
# ----------------------------------------------------------------------------------------------

def _gru_cell(x, h, w_ih, w_hh):
    gi = x @ w_ih.t()
    gh = h @ w_hh.t()
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    u = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - u) * n + u * h


def _correction(zz, h, w1, w2):
    return F.silu(torch.cat([zz, h], -1).float() @ w1.float().t()) @ w2.float().t()


def _rollout_standin(hidden, base_logits, anchor, head, embedding, *, num_proposals, shift_label=True,
                     pure_prefix_len=1, temperature=None, seed=None, offset=None, return_q_rows=False,
                     candidates=0, gru_table=None):
    """Greedy chain rollout; hidden [B, S, H], base_logits [B, N, V]; returns (tokens, q, None)."""
    b, n = anchor.shape[0], num_proposals
    zz = hidden[:, :n] if shift_label else hidden[:, 1:n + 1]
    w_ih, w_hh, w1, w2 = (getattr(head, k).float() for k in HEAD_FIELDS)
    h = torch.zeros(b, w_hh.shape[1], dtype=torch.float32, device=hidden.device)
    h = _gru_cell(embedding[anchor.long()].float(), h, w_ih, w_hh)
    tokens = torch.empty(b, n, dtype=torch.int64, device=hidden.device)
    q = torch.empty(b, n, dtype=torch.float32, device=hidden.device)
    for i in range(n):
        logits = base_logits[:, i].float()
        if i >= pure_prefix_len:
            logits = logits + _correction(zz[:, i].float(), h, w1, w2)
        y = logits.argmax(-1)
        tokens[:, i] = y
        q[:, i] = torch.softmax(logits, -1).gather(1, y[:, None])[:, 0]
        if i + 1 < n:
            h = _gru_cell(embedding[y].float(), h, w_ih, w_hh)
    return tokens, q, None


def _tree_rollout_standin(hidden, base_logits, anchor, head, embedding, *, topk, depth, budget,
                          shift_label=True, pure_prefix_len=1):
    """Depth-wise tree: each frontier node proposes its top-k children (corrected logits with the
    node's own GRU state); a level keeps the children of highest cumulative log-probability until
    ``budget`` drafted nodes exist. Returns (tokens [B, M], parents [B, M], q [B, M], num_nodes [B])
    with node 0 = anchor, M = budget + 1, padding nodes token -1 / parent -1 / q 0."""
    b = anchor.shape[0]
    dev = hidden.device
    depth = min(depth, base_logits.shape[1])
    zz = hidden[:, :depth] if shift_label else hidden[:, 1:depth + 1]
    w_ih, w_hh, w1, w2 = (getattr(head, k).float() for k in HEAD_FIELDS)
    m = budget + 1
    tokens = torch.full((b, m), -1, dtype=torch.int64, device=dev)
    parents = torch.full((b, m), -1, dtype=torch.int64, device=dev)
    q = torch.zeros(b, m, dtype=torch.float32, device=dev)
    tokens[:, 0], q[:, 0] = anchor, 1.0
    num = torch.ones(b, dtype=torch.int64, device=dev)
    for r in range(b):
        h0 = _gru_cell(embedding[anchor[r].long()].float()[None], torch.zeros(1, w_hh.shape[1], device=dev),
                       w_ih, w_hh)
        frontier = [(0, 0.0, h0)]  # (node, log-probability, GRU state after the node)
        count = 1
        for d in range(depth):
            cands = []
            for node, logp, h in frontier:
                logits = base_logits[r, d].float()
                if d >= pure_prefix_len:
                    logits = logits + _correction(zz[r, d].float()[None], h, w1, w2)[0]
                top = torch.topk(torch.log_softmax(logits, -1), topk)
                cands += [(logp + v, node, t, h) for v, t in zip(top.values.tolist(), top.indices.tolist())]
            cands = sorted(cands, key=lambda c: -c[0])[: m - count]
            if not cands:
                break
            frontier = []
            for logp, par, tok, h in cands:
                tokens[r, count], parents[r, count], q[r, count] = tok, par, math.exp(logp)
                frontier.append((count, logp, _gru_cell(embedding[tok].float()[None], h, w_ih, w_hh)))
                count += 1
        num[r] = count
    return tokens, parents, q, num


# ----------------------------------------------------------------------------------------------
# dispatch: the op when it is registered, else the stand-in
# ----------------------------------------------------------------------------------------------

append_kv = _ops.append_kv
tree_attention = _ops.tree_attention
tree_info = _ops.tree_info
verify = _ops.verify
chain_parents = _ops.chain_parents
domino_rollout = _ops.domino_rollout if _have("domino_rollout") else _rollout_standin
domino_tree_rollout = _ops.domino_tree_rollout if _have("domino_tree_rollout") else _tree_rollout_standin
sample = _ops.sample


def active_backends() -> dict:
    """Which entry points run a compiled op and which a stand-in (shown by the CLI's --json stats)."""
    names = ["domino_rollout", "domino_tree_rollout"]
    return {n: ("op" if _have(n) else "standin") for n in names}
