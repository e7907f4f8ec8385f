"""``torch.ops.domino.sample``: one token per row from logits, with temperature, top-k, top-p and
min-p applied exactly, and Philox randomness keyed by per-row seed and offset tensors.

Semantics (the contract of ``csrc/include/domino/sampling.h``; executable spec in
``domino_kernels.reference.sampling``):

* ``temperature == 0`` is greedy: the argmax of the raw logits, ties to the lowest index.
* otherwise the logits are divided by the temperature; top-k keeps the k largest (ties at the
  k-th value are kept), top-p then keeps the smallest set of largest values whose probability
  mass (renormalised over what top-k kept) reaches ``top_p`` (ties kept), min-p keeps tokens with
  probability >= ``min_p`` times the largest; the token is an exact sample of the renormalised
  result (Gumbel-max with counter-based Philox noise).
* ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` switch the filters off.
* bad rows: a NaN or +inf logit, every logit -inf, a temperature so small that the largest scaled
  logit overflows float32, or an out-of-range parameter. On CPU tensors these raise ``ValueError``
  naming the argument and the row (as ``verify`` does); CUDA tensors are not read on the host, so
  there the row's token is ``-1`` (the defined result: check ``out < 0`` on the device).

CPU and CUDA kernels return identical tokens for identical inputs, seeds and offsets. The
vocabulary may have up to 2^23 entries (the fixed-point mass sums are exact up to that size).
"""
from __future__ import annotations

import torch

from ._common import PerRow, check_fake_args, per_row, seeds_and_offsets


def sample(logits: torch.Tensor, temperature: PerRow = 1.0, top_k: PerRow = None,
           top_p: PerRow = None, min_p: PerRow = None, seed: PerRow = None,
           offset: PerRow = None) -> torch.Tensor:
    """Sample one token per row of ``logits`` ``[B, V]`` (fp32, bf16 or fp16) -> int64 ``[B]``.

    Every parameter is a scalar (applied to every row) or a ``[B]`` tensor. For CUDA-graph
    capture pass ``seed`` and ``offset`` as device tensors and advance ``offset`` between calls.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("argument 'logits' must be a 2-D tensor [batch, vocab]")
    batch, dev = logits.shape[0], logits.device
    seed_t, offset_t = seeds_and_offsets(seed, offset, batch, dev)
    return torch.ops.domino.sample(
        logits,
        per_row(temperature, batch, torch.float32, dev, "temperature"),
        per_row(top_k, batch, torch.int64, dev, "top_k"),
        per_row(top_p, batch, torch.float32, dev, "top_p"),
        per_row(min_p, batch, torch.float32, dev, "min_p"),
        seed_t,
        offset_t,
    )


@torch.library.register_fake("domino::sample")
def _sample_fake(logits, temperature, top_k, top_p, min_p, seed, offset):
    check_fake_args("domino::sample", dict(logits=logits, temperature=temperature, seed=seed,
                                           offset=offset), dict(top_k=top_k, top_p=top_p, min_p=min_p))
    torch._check(logits.dim() == 2, lambda: "domino::sample: argument 'logits' must be 2-D")
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)
