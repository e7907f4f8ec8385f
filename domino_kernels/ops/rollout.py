"""``torch.ops.domino.domino_rollout`` / ``domino_tree_rollout`` / ``build_gru_table`` /
``pack_w2``: the fused Domino draft-token rollout (spec §3.3), chain and tree, one vocabulary
pass per step that reads ``embed_proj.2`` once for the whole batch.

Semantics (contract: ``csrc/include/domino/rollout.h``; executable spec:
``domino_kernels.reference.rollout``; details in ``docs/rollout.md``):

* proposal ``i = 1..N`` uses ``zz_i = hidden[:, i-1]`` (shift_label) or ``hidden[:, i]``; the first
  ``pure_prefix_len`` proposals use the base logits alone, later ones
  ``base_i + W2 silu(W1 [zz_i ; h])`` with ``h`` the GRU state after ``[anchor, y_1 .. y_{i-1}]``.
* greedy (``temperature`` None or 0): argmax, ties to the lowest id, ``q`` = softmax at T = 1 of
  the chosen token. Sampled (T > 0): Gumbel-max with Philox stream ``(kDraftChain, i)`` (tree:
  ``(kDraftTree, expanded node)``), ``q`` = softmax(scores / T) of the chosen token.
* ``candidates = K > 0`` restricts the corrected proposals to a per-request shortlist (top-K of
  the max over corrected proposals of the base logits): an approximation of the draft, never of
  the output (verification stays exact); ``q`` / ``q_rows`` are then renormalised over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ._common import PerRow, per_row, seeds_and_offsets


@dataclass
class DominoHeadWeights:
    """The Domino head: ``prefix_gru.weight_ih_l0`` [3G, H], ``prefix_gru.weight_hh_l0`` [3G, G],
    ``embed_proj.0.weight`` [E, H+G] (z columns first), ``embed_proj.2.weight`` [V, E]."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor

    def tensors(self):
        return self.w_ih, self.w_hh, self.w1, self.w2


HeadLike = Union[DominoHeadWeights, Sequence[torch.Tensor]]


def _head(head: HeadLike) -> DominoHeadWeights:
    """A DominoHeadWeights, or the four tensors (w_ih, w_hh, w1, w2) in that order."""
    if isinstance(head, DominoHeadWeights):
        return head
    if len(head) != 4:
        raise ValueError("argument 'head' must be DominoHeadWeights or (w_ih, w_hh, w1, w2)")
    return DominoHeadWeights(*head)


def _sampling_args(temperature: PerRow, seed: PerRow, offset: PerRow, batch: int, device):
    if temperature is None:
        return None, None, None
    temp = per_row(temperature, batch, torch.float32, device, "temperature")
    seed_t, offset_t = seeds_and_offsets(seed, offset, batch, device)
    return temp, seed_t, offset_t


def domino_rollout(hidden: torch.Tensor, base_logits: torch.Tensor, anchor: torch.Tensor,
                   head: HeadLike, embedding: torch.Tensor, *, num_proposals: int,
                   shift_label: bool = True, pure_prefix_len: int = 1,
                   temperature: PerRow = None, seed: PerRow = None, offset: PerRow = None,
                   return_q_rows: bool = False, candidates: int = 0,
                   gru_table: Optional[torch.Tensor] = None,
                   w2_packed: Optional[torch.Tensor] = None):
    """Chain rollout -> ``(tokens [B, N] int64, q [B, N] fp32, q_rows [B, N, V] fp32 or [0])``.

    ``hidden`` [B, S, H] is the backbone block output (weight dtype), ``base_logits`` [B, >=N, V]
    the target lm_head of each proposal's hidden, ``anchor`` [B] int64, ``embedding`` [V, H] the
    target's embed_tokens, ``gru_table`` an optional [V, 3G] from :func:`build_gru_table`,
    ``w2_packed`` an optional CPU copy of ``head.w2`` from :func:`pack_w2` (same results, faster
    where the CPU has AVX512_BF16).
    """
    temp, seed_t, offset_t = _sampling_args(temperature, seed, offset, hidden.shape[0], hidden.device)
    return torch.ops.domino.domino_rollout(
        hidden, base_logits, anchor, *_head(head).tensors(), embedding, gru_table, int(num_proposals),
        bool(shift_label), int(pure_prefix_len), temp, seed_t, offset_t, bool(return_q_rows),
        int(candidates), w2_packed)


def domino_tree_rollout(hidden: torch.Tensor, base_logits: torch.Tensor, anchor: torch.Tensor,
                        head: HeadLike, embedding: torch.Tensor, *, topk: int,
                        depth: int, budget: int, shift_label: bool = True,
                        pure_prefix_len: int = 1, temperature: PerRow = None,
                        seed: PerRow = None, offset: PerRow = None,
                        gru_table: Optional[torch.Tensor] = None,
                        w2_packed: Optional[torch.Tensor] = None, return_q_rows: bool = False):
    """Dynamic tree rollout -> ``(tokens, parents [B, budget+1] int64, q [B, budget+1] fp32,
    num_nodes [B] int64, q_rows [B, budget+1, V] fp32 or [0])`` in the verification layout: node 0
    is the anchor (parent -1), ``parents[i] < i``, siblings contiguous in draw order, padding nodes
    have token -1, parent -1, q 0.

    Per depth (up to ``depth``) the ``topk`` best nodes of the newest depth are expanded into
    their top-``topk`` children (Gumbel-top-k when sampled); the ``budget`` best of all generated
    nodes are returned (rules in ``docs/rollout.md``). ``q_rows`` (on request) row n is the
    distribution node n's children were drawn from (zeros where node n was not expanded): the
    ``draft_probs`` of ``verify(rule="rejection_without_replacement")``. With ``topk = 1`` and
    greedy drafting, ``tokens[:, 1:depth+1]`` equal the chain rollout's tokens."""
    temp, seed_t, offset_t = _sampling_args(temperature, seed, offset, hidden.shape[0], hidden.device)
    return torch.ops.domino.domino_tree_rollout(
        hidden, base_logits, anchor, *_head(head).tensors(), embedding, gru_table, bool(shift_label),
        int(pure_prefix_len), int(topk), int(depth), int(budget), temp, seed_t, offset_t, w2_packed,
        bool(return_q_rows))


def build_gru_table(embedding: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
    """GRU input table ``embedding @ w_ih.T`` [V, 3G] in the weight dtype (fp32 accumulation).
    Memory: V * 3G * itemsize = 0.93 GB in bf16 for Qwen3-8B (V = 151936, G = 1024)."""
    return torch.ops.domino.build_gru_table(embedding, w_ih)


def pack_w2(w2: torch.Tensor) -> torch.Tensor:
    """CPU copy of a bf16 ``embed_proj.2`` weight [V, E] in the layout of the vocabulary kernel
    (16 vocabulary rows per 64-byte vector, bf16 column pairs: no horizontal sums): int32
    [ceil(V/16), ceil(E/2), 16], the ``w2_packed`` argument of the rollout ops. Same size as W2
    (77.8 MB for Qwen3-8B); build it once and rebuild it when W2 changes."""
    return torch.ops.domino.pack_w2(w2)


@torch.library.register_fake("domino::pack_w2")
def _pack_w2_fake(w2):
    V, E = w2.shape
    return w2.new_empty(((V + 15) // 16, (E + 1) // 2, 16), dtype=torch.int32)


@torch.library.register_fake("domino::domino_rollout")
def _rollout_fake(hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table,
                  num_proposals, shift_label, pure_prefix_len, temperature, seed, offset,
                  return_q_rows, candidates, w2_packed=None):
    torch._check(hidden.dim() == 3, lambda: "domino::domino_rollout: argument 'hidden' must be 3-D")
    B, V = hidden.shape[0], w2.shape[0]
    tokens = hidden.new_empty((B, num_proposals), dtype=torch.int64)
    q = hidden.new_empty((B, num_proposals), dtype=torch.float32)
    q_rows = hidden.new_empty((B, num_proposals, V) if return_q_rows else (0,), dtype=torch.float32)
    return tokens, q, q_rows


@torch.library.register_fake("domino::domino_tree_rollout")
def _tree_rollout_fake(hidden, base_logits, anchor, w_ih, w_hh, w1, w2, embedding, gru_table,
                       shift_label, pure_prefix_len, topk, depth, budget, temperature, seed,
                       offset, w2_packed=None, return_q_rows=False):
    torch._check(hidden.dim() == 3, lambda: "domino::domino_tree_rollout: argument 'hidden' must be 3-D")
    B, M, V = hidden.shape[0], budget + 1, w2.shape[0]
    return (hidden.new_empty((B, M), dtype=torch.int64), hidden.new_empty((B, M), dtype=torch.int64),
            hidden.new_empty((B, M), dtype=torch.float32), hidden.new_empty((B,), dtype=torch.int64),
            hidden.new_empty((B, M, V) if return_q_rows else (0,), dtype=torch.float32))


@torch.library.register_fake("domino::build_gru_table")
def _build_gru_table_fake(embedding, w_ih):
    return embedding.new_empty((embedding.shape[0], w_ih.shape[0]))
