"""The kernel entry points the model layer calls, in one place: the ``torch.ops.domino`` wrappers
of ``domino_kernels.ops`` (one import site keeps the model code independent of how the op package
is organised).

Layout conventions shared by every op (see docs/decode.md and each family's doc):
  * paged KV cache: ``[num_pages, page_size, Hkv, D]``, ``block_table [B, max_pages]`` int32,
    ``kv_lens [B]`` int32 = committed tokens, ``q_cu_lens [B+1]`` int32 over the new tokens;
  * trees: ``parents [B, T]`` with ``parents[:, 0] = -1`` and ``parents[b, i] < i``.
"""
from __future__ import annotations

from domino_kernels.ops import (DominoHeadWeights, append_kv, build_gru_table, chain_parents,  # noqa: F401
                                domino_rollout, domino_tree_rollout, pack_w2, sample, tree_attention,
                                tree_info, verify)

HEAD_FIELDS = ("w_ih", "w_hh", "w1", "w2")


def map_head(fn, head):
    """``head`` with ``fn`` applied to each of its four weights."""
    return DominoHeadWeights(**{k: fn(getattr(head, k)) for k in HEAD_FIELDS})
