"""Input builders shared by the verify tests (trees, logits, draft rows)."""
from __future__ import annotations

import numpy as np
import torch

from domino_kernels.ops.verify import RULES


def random_parents(batch: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """Random trees: parents[b, i] uniform in [0, i)."""
    par = torch.full((batch, T), -1, dtype=torch.int64)
    for i in range(1, T):
        par[:, i] = torch.randint(0, i, (batch,), generator=gen)
    return par


def one_hot_logits(targets, V: int, low: float = -10.0) -> torch.Tensor:
    """Logits [..., V] whose argmax is ``targets`` with a large margin."""
    t = torch.as_tensor(targets, dtype=torch.int64)
    x = torch.full((*t.shape, V), low)
    x.scatter_(-1, t.unsqueeze(-1), 10.0)
    return x


def op_args(tokens, parents, logits, *, rule="greedy", num_nodes=None, temperature=0.0,
            top_k=None, top_p=None, draft_probs=None, draft_token_probs=None, seed=0, offset=0):
    """Positional arguments of torch.ops.domino.verify (per-request tensors built here)."""
    B, T = tokens.shape
    def full(v, dt):
        return v.to(dt) if isinstance(v, torch.Tensor) else torch.full((B,), v, dtype=dt)

    return (tokens, parents, full(T if num_nodes is None else num_nodes, torch.int64), logits,
            full(temperature, torch.float32),
            None if top_k is None else full(top_k, torch.int64),
            None if top_p is None else full(top_p, torch.float32),
            draft_probs, draft_token_probs,
            full(seed, torch.int64) if not isinstance(seed, torch.Tensor) else seed,
            full(offset, torch.int64), RULES[rule])


def to_device(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
