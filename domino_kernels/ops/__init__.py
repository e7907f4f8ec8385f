"""Typed wrappers and fake (meta) implementations of every torch.ops.domino op, one module per
kernel family."""
from .sampling import sample
from .verify import chain_parents, verify

__all__ = ["sample", "verify", "chain_parents"]
