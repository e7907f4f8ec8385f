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


@case
def verify():
    g = torch.Generator().manual_seed(1)
    B, T, V = 6, 8, 3000
    tokens = torch.randint(0, V, (B, T), generator=g)
    parents = torch.zeros(B, T, dtype=torch.int64)
    for i in range(1, T):
        parents[:, i] = torch.randint(0, i, (B,), generator=g)
    tokens[4, 3] = 10**9  # a bad id read from device memory: request 4 must come back invalid
    logits = torch.randn(B, T, V, generator=g).to(torch.bfloat16)
    q = torch.softmax(torch.randn(B, T, V, generator=g), -1)
    for rule in range(4):
        args = (tokens, parents, torch.full((B,), T), logits,
                torch.tensor([0.0, 0.7, 1.0, 1.3, 1.0, 0.9]), torch.tensor([0, 10, 0, 50, 0, 5]),
                torch.tensor([1.0, 0.9, 0.5, 1.0, 1.0, 0.8]), q if rule >= 2 else None, None,
                torch.arange(B), torch.zeros(B, dtype=torch.int64), rule)
        out = torch.ops.domino.verify(*[a.cuda() if isinstance(a, torch.Tensor) else a
                                        for a in args])
        assert out[0][4].item() == -1, "verify: bad token id not flagged on CUDA"
        ref = dk.reference.verify(*args)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(out, ref)), \
            f"verify rule {rule}: CUDA != reference"


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
