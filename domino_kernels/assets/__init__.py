"""Checkpoints shipped with the package.

``default/`` holds the pair trained by ``python -m domino_kernels.train all`` (docs/training.md):
``target/`` (Hugging Face Qwen3 layout + tokenizer.json), ``draft-domino/`` (DFlash backbone +
Domino head) and ``draft-dflash/`` (DFlash-only, same budget), both in the public draft format.
"""
from __future__ import annotations

import os

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")


def default_target_dir() -> str:
    return os.path.join(DEFAULT_DIR, "target")


def default_draft_dir(kind: str = "domino") -> str:
    """``kind``: "domino" (the default drafter) or "dflash"."""
    if kind not in ("domino", "dflash"):
        raise ValueError(f"argument 'kind' must be 'domino' or 'dflash', got {kind!r}")
    return os.path.join(DEFAULT_DIR, f"draft-{kind}")
