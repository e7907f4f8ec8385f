"""``python -m domino_kernels <command>``.

Commands:
  demo   a small demonstration of the kernels on random logits (the decode-loop demo replaces it
         once the model layer lands)
"""
from __future__ import annotations

import argparse
import sys
import time


def demo(args) -> int:
    import torch

    import domino_kernels as dk

    torch.manual_seed(args.seed)
    logits = torch.randn(args.batch, args.vocab) * 3
    t0 = time.perf_counter()
    tokens = dk.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=args.seed, offset=0)
    dt = time.perf_counter() - t0
    greedy = dk.sample(logits, temperature=0.0, seed=0)
    print(f"sampled {args.batch} tokens over V={args.vocab} (T=0.8, top-k 50, top-p 0.9) "
          f"in {dt * 1e3:.2f} ms: {tokens.tolist()}")
    print(f"greedy tokens: {greedy.tolist()} (argmax check: {torch.equal(greedy, logits.argmax(-1))})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domino_kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the demo")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--vocab", type=int, default=151936)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=demo)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
