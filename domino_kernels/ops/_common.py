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
