"""What a plain step costs inside the speculative loop, relative to a target-only step.

A speculative ``generate`` whose adaptive policy is forced to plain steps (a frozen cost model in
which no draft could ever pay, so it never drafts or probes) against target-only ``generate`` on
the same prompt, seed and temperature: both emit the same tokens with the same number of steps,
so the ratio of their CPU seconds per step is the loop's overhead on plain steps (feature capture
and queueing, policy bookkeeping, prefill differences). Pairs are interleaved (order alternating)
and the median ratio is reported, in CPU seconds of this single-threaded process, which other jobs
on a shared machine inflate less than the wall clock.

    python -m bench.bench_plain_step [--root domino_kernels/assets/default] [--prompts 4]
                                     [--reps 8] [--temperature 1] [--max-new-tokens 128]
                                     [--dtype float32|bfloat16 (default: the checkpoint's)]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from bench.bench_models import DEFAULT_ROOT, heldout_prompts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="directory with target/ and draft-domino/")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's, as bench_models)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from domino_kernels.generate import generate
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3
    from domino_kernels.model.config import parse_dtype
    from domino_kernels.spec_policy import AdaptivePolicy, StepCosts

    root = os.path.abspath(args.root)
    target = load_qwen3(os.path.join(root, "target"), dtype=parse_dtype(args.dtype) if args.dtype else None)
    draft = load_draft(os.path.join(root, "draft-domino"), target, dtype=target.dtype)
    prompts = heldout_prompts(os.path.join(root, "target", "tokenizer.json"), args.prompts, 48)

    def per_step(j: int, spec: bool) -> float:
        kw = {}
        if spec:   # a draft step would cost 1000 plain steps: never drafts, never probes
            kw = dict(draft=draft, spec_policy=AdaptivePolicy(StepCosts(plain=1e-3, draft=1.0, verify_per_token=1.0,
                                                                        frozen=True)))
        t0 = time.process_time()
        res = generate(target, [prompts[j]], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       seed=j, ignore_eos=True, **kw)
        if spec and res.stats["draft_lengths"] != {"0": res.stats["steps"]}:
            raise RuntimeError(f"the forced-plain policy drafted: {res.stats['draft_lengths']}")
        return (time.process_time() - t0) / res.stats["steps"]

    for j in range(len(prompts)):            # warm-up
        per_step(j, False), per_step(j, True)
    ratios, base = [], []
    for i in range(args.reps):
        for j in range(len(prompts)):
            if (i + j) % 2:
                b = per_step(j, True)
                a = per_step(j, False)
            else:
                a = per_step(j, False)
                b = per_step(j, True)
            ratios.append(b / a)
            base.append(a)
        print(f"rep {i}: median spec-plain / target-only per-step CPU time {statistics.median(ratios):.4f} "
              f"(n={len(ratios)})", file=sys.stderr, flush=True)
    print(f"target-only {1e3 * statistics.median(base):.3f} ms/step; spec loop forced plain: "
          f"{statistics.median(ratios):.4f}x per step (median of {len(ratios)} interleaved pairs, "
          f"T={args.temperature}, {args.max_new_tokens} tokens, {target.dtype}, CPU seconds, 1 thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
