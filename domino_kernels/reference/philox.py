"""NumPy reference of the RNG contract in ``csrc/include/domino/philox.h``.

Philox4x32-10 keyed by the 64-bit per-request seed; counter = (index // 4, stream, offset_lo,
offset_hi); stream = (purpose << 24) | position. Vectorised over any number of indices.
"""
from __future__ import annotations

import numpy as np

SAMPLE, VERIFY_COIN, VERIFY_RESIDUAL, DRAFT_CHAIN, DRAFT_TREE = 1, 2, 3, 4, 5

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LO = np.uint64(0xFFFFFFFF)


def stream_id(purpose: int, position: int) -> int:
    return ((purpose << 24) | (position & 0xFFFFFF)) & 0xFFFFFFFF


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on uint32 counter arrays; returns four uint32 arrays."""
    c = [np.asarray(x, dtype=np.uint64) & _LO for x in (c0, c1, c2, c3)]
    k0, k1 = k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c[0]
        p1 = _M1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _LO
        hi1, lo1 = p1 >> np.uint64(32), p1 & _LO
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return [x.astype(np.uint32) for x in c]


def raw_words(seed: int, offset: int, stream: int, index) -> np.ndarray:
    """The raw 32-bit word of each element ``index`` of (seed, offset, stream)."""
    index = np.asarray(index, dtype=np.int64)
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    block = (index >> 2).astype(np.uint64)
    words = philox4x32_10(block, np.full_like(block, stream), np.full_like(block, offset & 0xFFFFFFFF),
                          np.full_like(block, offset >> 32), seed & 0xFFFFFFFF, seed >> 32)
    lanes = np.stack(words, axis=-1)
    return np.take_along_axis(lanes, (index & 3)[..., None], axis=-1)[..., 0]


def u32_to_uniform(words: np.ndarray) -> np.ndarray:
    """(u >> 9) * 2^-23 + 2^-24: a float32 in [2^-24, 1 - 2^-24]."""
    return ((words >> np.uint32(9)).astype(np.float32) * np.float32(1.1920928955078125e-07)
            + np.float32(5.9604644775390625e-08)).astype(np.float32)


def uniforms(seed: int, offset: int, stream: int, index) -> np.ndarray:
    """Uniforms in (0, 1) for elements ``index`` of (seed, offset, stream)."""
    return u32_to_uniform(raw_words(seed, offset, stream, index))
