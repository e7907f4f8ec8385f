"""NumPy float32 reference of ``csrc/include/domino/numerics.h`` (``domino::det``).

Same operation sequence, each step a correctly rounded float32 operation, so results are bit-equal
to the C++/CUDA helpers. Used by the references wherever a kernel decision depends on exp/log.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32
MASS_SCALE = f32(2.0**40)


def _bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def _from_bits(u):
    return np.asarray(u, dtype=np.uint32).view(np.float32)


def det_log(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        ix = _bits(x).copy()
        special_nan = np.isnan(x) | (x < 0)
        special_zero = x == 0
        special_inf = np.isposinf(x)
        k = np.zeros(x.shape, dtype=np.int64)
        sub = (ix < 0x00800000) & ~special_zero & ~special_nan
        if np.any(sub):
            ix[sub] = _bits(x[sub] * f32(33554432.0))
            k[sub] -= 25
        k += (ix >> 23).astype(np.int64) - 127
        m = ix & np.uint32(0x007FFFFF)
        hi = m > 0x3504F3
        mf = np.where(hi, _from_bits(m | np.uint32(0x3F000000)), _from_bits(m | np.uint32(0x3F800000)))
        k += hi.astype(np.int64)
        f = (mf - f32(1.0)).astype(np.float32)
        s = (f / (f32(2.0) + f)).astype(np.float32)
        z = s * s
        w = z * z
        t1 = w * (f32(0.40000972152) + w * f32(0.24279078841))
        t2 = z * (f32(0.66666662693) + w * f32(0.28498786688))
        R = t2 + t1
        hfsq = (f32(0.5) * f) * f
        dk = k.astype(np.float32)
        inner = s * (hfsq + R) + dk * f32(9.0580006145e-06)
        res = (dk * f32(6.9313812256e-01) - ((hfsq - inner) - f)).astype(np.float32)
    out[...] = res
    out[special_zero] = -np.inf
    out[special_inf] = np.inf
    out[special_nan] = np.nan
    return out


def det_exp(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        kf = np.floor(x * f32(1.44269504089) + f32(0.5)).astype(np.float32)
        kf = np.where(np.isfinite(kf), kf, f32(0)).astype(np.float32)
        r = ((x - kf * f32(0.693145751953125)) - kf * f32(1.428606765330187e-06)).astype(np.float32)
        p = f32(1.98412698e-4)
        for c in (1.38888889e-3, 8.33333333e-3, 4.16666667e-2, 1.66666667e-1, 0.5, 1.0, 1.0):
            p = (p * r + f32(c)).astype(np.float32)
        k = kf.astype(np.int64)
        k1 = np.trunc(k / 2).astype(np.int64)  # C++ integer division truncates toward zero
        k2 = k - k1
        k1c = np.clip(k1 + 127, 0, 255).astype(np.uint32)
        k2c = np.clip(k2 + 127, 0, 255).astype(np.uint32)
        res = ((p * _from_bits(k1c << np.uint32(23))) * _from_bits(k2c << np.uint32(23))).astype(np.float32)
    res = np.where(x > f32(88.72), np.float32(np.inf), res)
    res = np.where(x < f32(-87.33), f32(0.0), res)
    res = np.where(np.isnan(x), np.float32(np.nan), res)
    return res.astype(np.float32)


def ordered_key(x) -> np.ndarray:
    """Order-preserving float32 -> uint32 map (det::ordered_key)."""
    u = _bits(x)
    return np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000)).astype(np.uint32)


def fixed_mass(e) -> np.ndarray:
    """trunc(e * 2^40) as uint64 (det::fixed_mass)."""
    return (np.asarray(e, dtype=np.float32) * MASS_SCALE).astype(np.float32).astype(np.uint64)
