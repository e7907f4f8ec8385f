"""The optimiser settings and the learning-rate schedule that every training stage shares."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedule:
    """AdamW settings of a stage: peak ``lr``, linear warm-up over ``warmup`` steps, cosine decay to
    ``min_lr_ratio * lr`` at the last step, decoupled ``weight_decay``, gradient-norm clip."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0


def lr_at(step: int, steps: int, r: Schedule) -> float:
    """The learning rate of 0-based ``step`` of a ``steps``-step run."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = min(1.0, (step - r.warmup) / max(1, steps - r.warmup))
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
