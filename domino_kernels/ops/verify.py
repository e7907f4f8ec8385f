"""``torch.ops.domino.verify``: lossless verification of drafted chains and trees.

Contract: ``csrc/include/domino/verify.h``; executable spec: ``domino_kernels.reference.verify``;
rules, proofs and layouts: ``docs/verify.md``.

A request is a tree: node 0 is the root (the last committed token, not verified), ``parents[b, i]
< i`` (a chain is ``parents[i] = i - 1``, see :func:`chain_parents`), ``draft_tokens[b, i]`` is the
token of node ``i`` and ``logits[b, i]`` the target logits of the token that follows node ``i``.
Temperature, top-k and top-p are applied to the target logits inside the op, with exactly
``domino::sample``'s definitions; losslessness is with respect to that processed target.

Rules: ``"greedy"`` (argmax match; also used for any request whose temperature is 0),
``"target_only"`` (sample the target, accept the matching child: lossless for any draft, optimal
for deterministic top-k children), ``"rejection"`` (children drawn i.i.d. from the draft row q:
Leviathan/Chen for chains, SpecInfer recursive rejection for trees) and
``"rejection_without_replacement"`` (children drawn without replacement: RSD).
The rejection rules need ``draft_probs`` ``[B, T, V]`` (row i = the distribution node i's children
were drawn from) or ``draft_token_probs`` ``[B, T]`` (q of node i's token; exact only when the draft
mass lies on the drafted tokens, e.g. greedy drafts with q = 1).

Returns ``(accept_len [B], accept_path [B, T], emitted [B, T])``, int64, -1 padded; ``emitted``
holds the accepted draft tokens then the bonus/correction token. CPU tensors raise on bad input
(naming the argument); on CUDA an invalid request gets ``accept_len = -1`` and -1 rows.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._common import PerRow, check_fake_args, per_row, seeds_and_offsets

RULES = {"greedy": 0, "target_only": 1, "rejection": 2, "rejection_without_replacement": 3}


def chain_parents(batch: int, T: int, device=None) -> torch.Tensor:
    """Parents ``[batch, T]`` of a chain: ``parents[:, i] = i - 1`` (the root's -1 is ignored)."""
    return (torch.arange(T, dtype=torch.int64, device=device) - 1).expand(batch, T).contiguous()


def verify(draft_tokens: torch.Tensor, parents: torch.Tensor, logits: torch.Tensor, *,
           num_nodes: PerRow = None, rule: str = "greedy", temperature: PerRow = 0.0,
           top_k: PerRow = None, top_p: PerRow = None,
           draft_probs: Optional[torch.Tensor] = None,
           draft_token_probs: Optional[torch.Tensor] = None, seed: PerRow = None,
           offset: PerRow = None):
    """Verify ``[B, T]`` drafted trees against target ``logits`` ``[B, T, V]`` (fp32/bf16/fp16).

    Scalars broadcast to every request. ``num_nodes`` defaults to ``T``. For CUDA-graph capture
    pass ``seed``/``offset`` (and the other per-request values) as device tensors.
    """
    if not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dim() != 2:
        raise ValueError("argument 'draft_tokens' must be a 2-D tensor [batch, nodes]")
    if rule not in RULES:
        raise ValueError(f"argument 'rule' must be one of {sorted(RULES)}, got {rule!r}")
    batch, T = draft_tokens.shape
    dev = draft_tokens.device
    seed_t, offset_t = seeds_and_offsets(seed, offset, batch, dev)
    return torch.ops.domino.verify(
        draft_tokens,
        parents,
        per_row(T if num_nodes is None else num_nodes, batch, torch.int64, dev, "num_nodes"),
        logits,
        per_row(temperature, batch, torch.float32, dev, "temperature"),
        per_row(top_k, batch, torch.int64, dev, "top_k"),
        per_row(top_p, batch, torch.float32, dev, "top_p"),
        draft_probs,
        draft_token_probs,
        seed_t,
        offset_t,
        RULES[rule],
    )


@torch.library.register_fake("domino::verify")
def _verify_fake(draft_tokens, parents, num_nodes, logits, temperature, top_k, top_p,
                 draft_probs, draft_token_probs, seed, offset, rule):
    check_fake_args("domino::verify",
                    dict(draft_tokens=draft_tokens, parents=parents, num_nodes=num_nodes,
                         logits=logits, temperature=temperature, seed=seed, offset=offset),
                    dict(top_k=top_k, top_p=top_p, draft_probs=draft_probs,
                         draft_token_probs=draft_token_probs))
    torch._check(draft_tokens.dim() == 2,
                 lambda: "domino::verify: argument 'draft_tokens' must be 2-D")
    b, t = draft_tokens.shape
    return (draft_tokens.new_empty((b,), dtype=torch.int64),
            draft_tokens.new_empty((b, t), dtype=torch.int64),
            draft_tokens.new_empty((b, t), dtype=torch.int64))
