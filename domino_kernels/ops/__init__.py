"""Typed wrappers and fake (meta) implementations of every torch.ops.domino op, one module per
kernel family."""
from .sampling import sample

__all__ = ["sample"]
