"""Smoke test of an installed domino-kernels (run by scripts/check_packages.sh from outside the
source tree): the package comes from site-packages, its metadata, build record and extension
agree, the shipped assets are there, a few ops match the pure-PyTorch reference, and importing
under another torch version fails with an error naming both versions.

    python scripts/package_smoke.py
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import torch

import domino_kernels as dk
from domino_kernels import _C, _build_info, assets, reference

site = os.path.realpath(dk.__file__)
assert os.path.realpath(sys.prefix) in site, f"domino_kernels imported from {site}, not from {sys.prefix}"
dist_version = importlib.metadata.version("domino-kernels")
assert dist_version.split("+")[0] == dk.__version__, (dist_version, dk.__version__)
assert _build_info.TORCH_VERSION == _C.TORCH_VERSION == torch.__version__, \
    (_build_info.TORCH_VERSION, _C.TORCH_VERSION, torch.__version__)
for kind in ("domino", "dflash"):
    assert os.path.isfile(os.path.join(assets.default_draft_dir(kind), "model.safetensors"))
assert os.path.isfile(os.path.join(assets.default_target_dir(), "model.safetensors"))
assert os.path.isfile(os.path.join(assets.DEFAULT_DIR, "..", "NOTICE"))

gen = torch.Generator().manual_seed(0)
logits = torch.randn(4, 1000, generator=gen)
seed, offset = torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.int64)
temperature, top_k, top_p = torch.full((4,), 0.8), torch.full((4,), 50), torch.full((4,), 0.9)
ours = dk.sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, offset=offset)
ref = reference.sample(logits, temperature, top_k, top_p, None, seed, offset)
assert torch.equal(ours, ref), (ours, ref)
assert torch.equal(dk.sample(logits, temperature=0.0), logits.argmax(-1))

T = 6
target = torch.randn(2, T, 1000, generator=gen)
draft = target.argmax(-1)
draft[1, 3] = (draft[1, 3] + 1) % 1000  # request 1 diverges at node 3
accepted = dk.verify(draft, dk.chain_parents(2, T), target, rule="greedy")
expected = reference.verify(draft, dk.chain_parents(2, T), torch.full((2,), T), target, torch.zeros(2),
                            None, None, None, None, torch.zeros(2, dtype=torch.int64),
                            torch.zeros(2, dtype=torch.int64), 0)
for a, b in zip(accepted, expected):
    assert torch.equal(a, b), (accepted, expected)

probe = subprocess.run([sys.executable, "-c", "import torch; torch.__version__ = '1.0.0'; import domino_kernels"],
                       capture_output=True, text=True)
assert probe.returncode != 0 and "1.0.0" in probe.stderr and _build_info.TORCH_VERSION in probe.stderr, probe.stderr
print(f"package smoke test passed: domino-kernels {dist_version} from {os.path.dirname(site)}, "
      f"torch {torch.__version__}; sample and verify match the reference; a torch mismatch is refused:\n  "
      + probe.stderr.strip().splitlines()[-1])
