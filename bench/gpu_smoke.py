"""One small CUDA case of every op, for `compute-sanitizer --tool memcheck` in bench/gpu_check.sh.

Each case runs the op on a small CUDA input, synchronises, and compares with the CPU kernel, so a
memory error, a launch failure or a CPU/CUDA mismatch all show. Add one case per op family.
"""
from __future__ import annotations

import sys

import torch

import domino_kernels as dk  # noqa: F401

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=g).to(torch.bfloat16)
    args = (logits, torch.tensor([0.0, 0.7, 1.0, 1.3]), torch.tensor([0, 10, 0, 50]),
            torch.tensor([1.0, 0.9, 0.5, 1.0]), torch.tensor([0.0, 0.0, 0.05, 0.0]),
            torch.arange(4), torch.zeros(4, dtype=torch.int64))
    out = torch.ops.domino.sample(*[a.cuda() for a in args]).cpu()
    assert torch.equal(out, torch.ops.domino.sample(*args)), "sample: CUDA != CPU"


def main(names) -> int:
    failed = []
    for name in names or CASES:
        try:
            CASES[name]()
            torch.cuda.synchronize()
            print(f"[gpu_smoke] {name}: ok")
        except Exception as e:  # report every case, then fail
            failed.append(name)
            print(f"[gpu_smoke] {name}: FAILED: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
