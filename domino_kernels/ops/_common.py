"""Helpers the op wrappers share: turning Python scalars into the per-request tensors the ops take."""
from __future__ import annotations

from typing import Optional, Union

import torch

PerRow = Union[float, int, torch.Tensor, None]


def per_row(value: PerRow, batch: int, dtype: torch.dtype, device: torch.device,
            name: str) -> Optional[torch.Tensor]:
    """A scalar broadcast to ``[batch]``, or a tensor converted to ``dtype`` on ``device``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"argument '{name}' must be a scalar or have shape [{batch}], "
                             f"got {list(value.shape)}")
        return value.to(device=device, dtype=dtype).contiguous()
    return torch.full((batch,), value, dtype=dtype, device=device)


def seeds_and_offsets(seed: PerRow, offset: PerRow, batch: int, device: torch.device):
    """Per-row int64 seed and offset tensors. ``seed=None`` draws fresh seeds from torch's
    default CPU generator (convenient, but not CUDA-graph capturable: pass tensors for that)."""
    if seed is None:
        seed = torch.randint(0, 2**62, (batch,), dtype=torch.int64)
    seed_t = per_row(seed, batch, torch.int64, device, "seed")
    offset_t = per_row(0 if offset is None else offset, batch, torch.int64, device, "offset")
    return seed_t, offset_t


def check_fake_args(op: str, required: dict, optional: dict = None) -> None:
    """Argument checks of a fake (meta) kernel. The dispatcher runs the fake kernel whenever one
    argument is on ``meta``, so a call that mixes ``meta`` with CPU/CUDA tensors lands here and
    must raise like the real kernels (which refuse mixed devices) instead of returning empty
    tensors. ``required``/``optional`` map argument names to values, in schema order; the first
    tensor is the reference device."""
    ref_name, ref = None, None
    for name, value in list(required.items()) + list((optional or {}).items()):
        if value is None:
            if name in required:
                raise ValueError(f"{op}: argument '{name}' is required, got None")
            continue
        if ref is None:
            ref_name, ref = name, value
        elif value.device != ref.device:
            raise ValueError(f"{op}: argument '{name}' must be on the same device as "
                             f"'{ref_name}' ({ref.device}), got {value.device}")
