"""Reference of ``tree_attention``, ``append_kv`` and ``tree_info`` (contract:
``csrc/include/domino/attention.h``).

Written for clarity: each request's keys are gathered from the pages into a dense tensor, a dense
``[n_new, prefix + n_new]`` boolean mask is built and the attention is computed in fp32 (or
float64 when asked) with a plain softmax. The kernels never build that mask.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

CAUSAL, TREE, FULL = 0, 1, 2


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, b: int, length: int) -> torch.Tensor:
    """Positions ``[0, length)`` of request ``b`` as a dense ``[length, Hkv, D]`` tensor."""
    page_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    pages = block_table[b].long()[pos // page_size]
    return cache[pages, pos % page_size]


def new_token_mask(mode: int, n: int, tree_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """``[n, n]`` bool: may new token i see new token j."""
    if mode == CAUSAL:
        return torch.ones(n, n, dtype=torch.bool).tril()
    if mode == FULL:
        return torch.ones(n, n, dtype=torch.bool)
    j = torch.arange(n)
    words = tree_rows.long()[:, j // 32] & 0xFFFFFFFF
    return ((words >> (j % 32)) & 1).bool()


def tree_attention(q, k_cache, v_cache, block_table, kv_lens, q_cu_lens, tree_mask=None,
                   mask_mode: int = CAUSAL, scale: Optional[float] = None,
                   dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention per request. Returns ``(out [total_q, Hq, D]`` in ``dtype``,
    ``lse [total_q, Hq]`` in ``dtype)``; rows that see nothing get 0 and -inf."""
    total_q, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(total_q, hq, d, dtype=dtype)
    lse = torch.full((total_q, hq), float("-inf"), dtype=dtype)
    cu = q_cu_lens.cpu().long()
    for b in range(block_table.shape[0]):
        lo, hi = int(cu[b]), int(cu[b + 1])
        n, prefix = hi - lo, int(kv_lens[b])
        if n == 0:
            continue
        keys = gather_kv(k_cache.cpu(), block_table.cpu(), b, prefix + n).to(dtype)
        vals = gather_kv(v_cache.cpu(), block_table.cpu(), b, prefix + n).to(dtype)
        keys = keys.repeat_interleave(group, dim=1)  # [L, Hq, D]
        vals = vals.repeat_interleave(group, dim=1)
        rows = None if tree_mask is None else tree_mask.cpu()[lo:hi]
        mask = torch.cat([torch.ones(n, prefix, dtype=torch.bool),
                          new_token_mask(mask_mode, n, rows)], dim=1)  # [n, L]
        qb = q.cpu()[lo:hi].to(dtype)
        scores = torch.einsum("nhd,lhd->hnl", qb, keys) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [Hq, n]
        seen = mask.any(dim=1)
        probs = torch.where(seen[None, :, None], torch.exp(scores - row_lse[..., None]),
                            torch.zeros_like(scores))
        out[lo:hi] = torch.einsum("hnl,lhd->nhd", probs, vals)
        lse[lo:hi] = row_lse.transpose(0, 1)
    return out, lse


def append_kv(k, v, k_cache, v_cache, block_table, kv_lens, q_cu_lens) -> None:
    """Write new token i of request b to logical position ``kv_lens[b] + i`` (in place)."""
    page_size = k_cache.shape[1]
    cu = q_cu_lens.cpu().long()
    for b in range(block_table.shape[0]):
        for i in range(int(cu[b + 1] - cu[b])):
            pos = int(kv_lens[b]) + i
            page = int(block_table[b, pos // page_size])
            k_cache[page, pos % page_size] = k[int(cu[b]) + i]
            v_cache[page, pos % page_size] = v[int(cu[b]) + i]


def tree_info(parents, num_nodes=None, prefix_lens=None):
    """Ancestor-or-self mask ``[B, T, ceil(T/32)]`` int32, depth ``[B, T]`` int32, positions
    ``[B, T]`` int64, by walking each node's parent chain."""
    parents = parents.cpu().long()
    batch, nodes = parents.shape
    words = (nodes + 31) // 32
    num_nodes = [nodes] * batch if num_nodes is None else [int(x) for x in num_nodes]
    prefix_lens = [0] * batch if prefix_lens is None else [int(x) for x in prefix_lens]
    bits = torch.zeros(batch, nodes, words * 32, dtype=torch.bool)
    depth = torch.zeros(batch, nodes, dtype=torch.int32)
    for b in range(batch):
        for i in range(num_nodes[b]):
            node, dep = i, 0
            while node >= 0:
                bits[b, i, node] = True
                node = int(parents[b, node]) if node > 0 else -1
                dep += node >= 0
            depth[b, i] = dep
    weights = (1 << torch.arange(32, dtype=torch.int64))
    packed = (bits.view(batch, nodes, words, 32).long() * weights).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    positions = torch.tensor(prefix_lens, dtype=torch.int64)[:, None] + depth.long()
    return packed, depth, positions
