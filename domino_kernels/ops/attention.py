"""Attention over a paged KV cache with causal / tree / full masks over the new tokens, appending
K/V into the paged cache, and turning a parent array into packed ancestor masks.

Contract: ``csrc/include/domino/attention.h`` (layouts, defined results for bad device values);
executable spec: ``domino_kernels.reference.attention``; documentation: ``docs/attention.md``.

Cache layout (one layer): ``k_cache`` / ``v_cache`` ``[num_pages, page_size, Hkv, D]`` (any strides
over the first three dims, unit stride over D; a contiguous cache is ``num_pages = 1`` with one
big page, or one page per request). ``block_table [B, max_pages]`` int32 maps logical position
``pos`` of request ``b`` to page ``block_table[b, pos // page_size]``, slot ``pos % page_size``.
``kv_lens [B]`` int32 is each request's committed prefix length *excluding* its new tokens;
``q_cu_lens [B+1]`` int32 the cumulative new-token counts. New token ``i`` of request ``b`` lives at
logical position ``kv_lens[b] + i`` (``append_kv`` writes it there).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ._common import check_fake_args

MASK_MODES = {"causal": 0, "tree": 1, "full": 2}


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   block_table: torch.Tensor, kv_lens: torch.Tensor, q_cu_lens: torch.Tensor, *,
                   mode: str = "causal", tree_mask: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None, return_lse: bool = False
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Attention of the new tokens ``q [total_q, Hq, D]`` over each request's cached prefix plus
    its new tokens. Every query sees the whole prefix ``[0, kv_lens[b])``; among the new tokens,
    ``mode="causal"`` sees tokens ``0..i``, ``"tree"`` sees token ``j`` iff bit ``j`` of its row of
    ``tree_mask [total_q, ceil(max_new/32)]`` int32 is set (bit ``j % 32`` of word ``j // 32``;
    ``tree_info`` builds it), ``"full"`` sees all of them. GQA: query head ``h`` uses KV head
    ``h // (Hq // Hkv)``. ``scale`` defaults to ``1/sqrt(D)``.

    Returns ``out [total_q, Hq, D]`` in q's dtype, or ``(out, lse)`` with ``lse [total_q, Hq]``
    fp32 (natural-log log-sum-exp of the scaled scores) when ``return_lse``. A row that sees no key
    gets zeros and ``lse = -inf``.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"argument 'mode' must be one of {sorted(MASK_MODES)}, got {mode!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out, lse = torch.ops.domino.tree_attention(q, k_cache, v_cache, block_table, kv_lens, q_cu_lens,
                                               tree_mask, MASK_MODES[mode], float(scale),
                                               return_lse)
    return (out, lse) if return_lse else out


def append_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              block_table: torch.Tensor, kv_lens: torch.Tensor, q_cu_lens: torch.Tensor) -> None:
    """Write ``k``/``v`` ``[total_q, Hkv, D]`` (new token i of request b) into the caches at
    logical position ``kv_lens[b] + i`` through the block table. ``kv_lens`` is not advanced:
    the caller commits tokens by raising it."""
    torch.ops.domino.append_kv(k, v, k_cache, v_cache, block_table, kv_lens, q_cu_lens)


def tree_info(parents: torch.Tensor, num_nodes: Optional[torch.Tensor] = None,
              prefix_lens: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ``parents [B, T]`` (or ``[T]``) int64 (``parents[b, 0] = -1``, ``parents[b, i] < i``)
    build the ancestor-or-self mask ``[B, T, ceil(T/32)]`` int32, ``depth [B, T]`` int32 (root 0)
    and ``positions [B, T]`` int64 ``= prefix_lens + depth``. ``num_nodes [B]`` (default T) limits
    the valid nodes; node ``i >= num_nodes[b]`` gets mask 0, depth 0, position ``prefix_lens[b]``.
    For ``tree_attention`` on a ragged batch, take ``mask[b, :num_nodes[b]]`` of each request."""
    squeeze = parents.dim() == 1
    if squeeze:
        parents = parents.unsqueeze(0)
    parents = parents.to(torch.int64).contiguous()
    batch, nodes = parents.shape
    dev = parents.device
    if num_nodes is None:
        num_nodes = torch.full((batch,), nodes, dtype=torch.int64, device=dev)
    if prefix_lens is None:
        prefix_lens = torch.zeros((batch,), dtype=torch.int64, device=dev)
    num_nodes = torch.as_tensor(num_nodes, device=dev).to(torch.int64).reshape(-1).contiguous()
    prefix_lens = torch.as_tensor(prefix_lens, device=dev).to(torch.int64).reshape(-1).contiguous()
    mask, depth, positions = torch.ops.domino.tree_info(parents, num_nodes, prefix_lens)
    if squeeze:
        return mask[0], depth[0], positions[0]
    return mask, depth, positions


@torch.library.register_fake("domino::tree_attention")
def _tree_attention_fake(q, k_cache, v_cache, block_table, kv_lens, q_cu_lens, tree_mask,
                         mask_mode, scale, return_lse):
    check_fake_args("domino::tree_attention",
                    dict(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                         kv_lens=kv_lens, q_cu_lens=q_cu_lens), dict(tree_mask=tree_mask))
    torch._check(q.dim() == 3, lambda: "domino::tree_attention: argument 'q' must be 3-D")
    out = q.new_empty(q.shape)
    if return_lse:
        lse = q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
    else:
        lse = q.new_empty((0,), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("domino::append_kv")
def _append_kv_fake(k, v, k_cache, v_cache, block_table, kv_lens, q_cu_lens):
    check_fake_args("domino::append_kv",
                    dict(k=k, v=v, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                         kv_lens=kv_lens, q_cu_lens=q_cu_lens))
    return None


@torch.library.register_fake("domino::tree_info")
def _tree_info_fake(parents, num_nodes, prefix_lens):
    check_fake_args("domino::tree_info",
                    dict(parents=parents, num_nodes=num_nodes, prefix_lens=prefix_lens))
    torch._check(parents.dim() == 2, lambda: "domino::tree_info: argument 'parents' must be 2-D")
    batch, nodes = parents.shape
    words = (nodes + 31) // 32
    return (parents.new_empty((batch, nodes, words), dtype=torch.int32),
            parents.new_empty((batch, nodes), dtype=torch.int32),
            parents.new_empty((batch, nodes), dtype=torch.int64))
