"""The corpus: the Python standard library sources of the running interpreter.

Every machine that runs this package has them (``sysconfig.get_paths()["stdlib"]``), so training
needs no download. They are distributed under the PSF License Agreement (docs/training.md). The
split into training and held-out files is a hash of each file's path relative to the stdlib
root, so it is the same on every machine and every run with the same Python version.
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

# Directories that are not ordinary library code (vendored packages, bulk test data).
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
HELDOUT_PERCENT = 5


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _is_heldout(rel: str) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:4], "little")
    return h % 100 < HELDOUT_PERCENT


def corpus_files(split: str, root: Optional[str] = None, limit: Optional[int] = None) -> list[str]:
    """Sorted absolute paths of the ``split`` ("train" or "heldout") ``.py`` files."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = root or stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            if _is_heldout(os.path.relpath(path, root)) == (split == "heldout"):
                out.append(path)
    out.sort()
    return out[:limit] if limit else out


def read_texts(paths: list[str]) -> Iterator[str]:
    """File contents; files that are not valid UTF-8 (a handful of legacy encodings) are skipped."""
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


def encode_corpus(tok, paths: list[str], eos_id: int) -> torch.Tensor:
    """One int32 token stream: every file's ids followed by ``eos_id`` (files are documents)."""
    ids: list[int] = []
    texts = list(read_texts(paths))
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.int32)


@dataclass
class WindowSampler:
    """Random fixed-length windows of a token stream, from a private seeded generator."""

    stream: torch.Tensor
    seq_len: int
    seed: int

    def __post_init__(self):
        if self.stream.numel() <= self.seq_len + 1:
            raise ValueError(f"token stream of {self.stream.numel()} ids is too short for "
                             f"seq_len={self.seq_len}")
        self.gen = torch.Generator().manual_seed(self.seed)

    def batch(self, batch_size: int) -> torch.Tensor:
        hi = self.stream.numel() - self.seq_len
        starts = torch.randint(0, hi, (batch_size,), generator=self.gen)
        idx = starts[:, None] + torch.arange(self.seq_len)[None, :]
        return self.stream[idx].long()
