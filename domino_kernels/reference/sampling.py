"""Reference of ``torch.ops.domino.sample`` (contract: ``csrc/include/domino/sampling.h``).

Written for clarity: it sorts, where the CUDA kernel radix-selects. Every decision uses the same
float32 operations as the kernels (``numerics.py``), so tokens match bit for bit.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import philox
from .numerics import det_exp, fixed_mass, ordered_key



def _row_is_valid(t, k, p, q) -> bool:
    if np.isnan(t) or t < 0 or k < 0:
        return False
    if np.isnan(p) or not (0 < p <= 1) or np.isnan(q) or not (0 <= q <= 1):
        return False
    return True


def kept_mask(scaled: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The tokens a row keeps after top-k, top-p and min-p (temperature already applied)."""
    n = scaled.shape[0]
    keys = ordered_key(scaled)
    m = scaled.max()
    keep = np.ones(n, dtype=bool)
    if 0 < top_k < n:
        kth = np.sort(keys)[::-1][top_k - 1]
        keep &= keys >= kth
    if top_p < 1.0:
        e = det_exp((scaled - m).astype(np.float32))
        w = np.where(keep, fixed_mass(e), np.uint64(0))
        target = float(np.float32(top_p)) * float(int(w.sum(dtype=np.uint64)))
        order = np.argsort(-keys.astype(np.int64), kind="stable")  # descending values
        cum = np.cumsum(w[order], dtype=np.uint64)
        first = int(np.argmax(cum.astype(np.float64) >= target))
        keep &= keys >= keys[order[first]]
    if min_p > 0.0:
        keep &= det_exp((scaled - m).astype(np.float32)) >= np.float32(min_p)
    return keep


def sample_row(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float,
               seed: int, offset: int) -> int:
    l = logits.astype(np.float32)
    t = np.float32(temperature)
    if not _row_is_valid(t, top_k, np.float32(top_p), np.float32(min_p)):
        return -1
    if np.isnan(l).any() or np.isposinf(l).any() or not (l > -np.inf).any():
        return -1
    if t == 0:
        return int(np.argmax(l))  # first maximum = lowest index
    with np.errstate(all="ignore"):
        s = (l * (np.float32(1.0) / t)).astype(np.float32)  # 1/T rounded once, as the kernels
    m = s.max()
    if not np.isfinite(m):
        return -1
    keep = kept_mask(s, top_k, float(top_p), float(min_p))
    w = np.where(keep, fixed_mass(det_exp((s - m).astype(np.float32))), np.uint64(0))
    cum = np.cumsum(w, dtype=np.uint64)
    words = philox.raw_words(seed, offset, philox.stream_id(philox.SAMPLE, 0), np.arange(2))
    u64 = (int(words[0]) << 32) | int(words[1])
    r = (u64 * int(cum[-1])) >> 64  # floor(U * W / 2^64): the drawn mass rank in [0, W)
    return int(np.searchsorted(cum, r, side="right"))  # first index whose prefix exceeds r


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: Optional[torch.Tensor],
           top_p: Optional[torch.Tensor], min_p: Optional[torch.Tensor], seed: torch.Tensor,
           offset: torch.Tensor) -> torch.Tensor:
    """Same arguments as ``torch.ops.domino.sample``; returns int64 ``[B]`` on logits' device."""
    b = logits.shape[0]
    x = logits.detach().float().cpu().numpy()
    col = lambda v, d: [d] * b if v is None else v.detach().cpu().tolist()  # noqa: E731
    temps, ks, ps, qs = col(temperature, 1.0), col(top_k, 0), col(top_p, 1.0), col(min_p, 0.0)
    seeds, offs = col(seed, 0), col(offset, 0)
    out = [sample_row(x[i], temps[i], int(ks[i]), ps[i], qs[i], int(seeds[i]), int(offs[i]))
           for i in range(b)]
    return torch.tensor(out, dtype=torch.int64, device=logits.device)
