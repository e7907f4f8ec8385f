"""Greedy vs sampled cost of the CPU rollout ops (chain and tree), in CPU seconds of this process.

Random bf16 weights (timing does not depend on their values) at two head shapes:
  default  the embedded default pair's head: H=256, G=256, E=64, V=4096, 16 proposals, block 16
  qwen3-8b Qwen3-8B head shapes: H=4096, G=1024, E=256, V=151936, 15 proposals (no GRU table:
           the [V, 3G] table would be ~0.9 GB; the W_ih GEMV costs the same in both modes)
B=1, shift_label, pure prefix 1, the packed W2 copy where the CPU runs it. Modes, called in turn
(greedy, sampled, greedy, ...) so that their ratio is stable on a shared machine:
  chain greedy / chain sampled (T=1, q rows: what decode's sampled chain drafting calls)
  tree greedy / tree sampled (topk 4, budget 64, T=1, q rows) -- default shapes only.
Reports the median CPU time per call (time.process_time, all threads: run it with
OMP_NUM_THREADS=1 for single-thread figures) and sampled / greedy per shape.

    OMP_NUM_THREADS=1 python -m bench.bench_rollout_sampled [--shapes default,qwen3-8b] [--iters 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import domino_kernels as dk
from domino_kernels import _C

SHAPES = {  # H, G, E, V, N (proposals), table
    "default": (256, 256, 64, 4096, 16, True),
    "qwen3-8b": (4096, 1024, 256, 151936, 15, False),
}


def make_case(name: str, seed: int = 0):
    H, G, E, V, N, table = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc: (torch.randn(*s, generator=g) * sc).to(torch.bfloat16)  # noqa: E731
    head = dk.ops.DominoHeadWeights(w_ih=r(3 * G, H, sc=0.02), w_hh=r(3 * G, G, sc=0.03),
                                    w1=r(E, H + G, sc=0.02), w2=r(V, E, sc=0.1))
    emb = r(V, H, sc=0.02)
    hidden = r(1, 16, H, sc=1.0)
    base = (torch.randn(1, N, V, generator=g) * 2.0).float()
    anchor = torch.tensor([3])
    extra = dict(gru_table=dk.ops.build_gru_table(emb, head.w_ih) if table else None,
                 w2_packed=dk.ops.pack_w2(head.w2) if _C.CPU_PACKED_W2 else None)
    sampled = dict(temperature=1.0, seed=1234, offset=0, return_q_rows=True)
    common = (hidden, base, anchor, head, emb)
    fns = {
        "chain_greedy": lambda: dk.ops.domino_rollout(*common, num_proposals=N, **extra),
        "chain_sampled": lambda: dk.ops.domino_rollout(*common, num_proposals=N, **extra, **sampled),
    }
    if name == "default":
        tree = dict(topk=4, depth=N, budget=64)
        fns["tree_greedy"] = lambda: dk.ops.domino_tree_rollout(*common, **tree, **extra)
        fns["tree_sampled"] = lambda: dk.ops.domino_tree_rollout(*common, **tree, **extra, **sampled)
    return fns


def cpu_times(fns, iters: int):
    for fn in fns.values():
        fn()
    ts = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            ts[k].append(time.process_time() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="default,qwen3-8b")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = ap.parse_args(argv)
    out = {"threads": torch.get_num_threads()}
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise ValueError(f"argument --shapes: unknown shape {name!r} (known: {', '.join(SHAPES)})")
        ms = cpu_times(make_case(name), args.iters if name == "default" else max(3, args.iters // 3))
        out[name] = {k: round(v, 4) for k, v in ms.items()}
        out[name]["chain_sampled/greedy"] = round(ms["chain_sampled"] / ms["chain_greedy"], 2)
        if "tree_sampled" in ms:
            out[name]["tree_sampled/greedy"] = round(ms["tree_sampled"] / ms["tree_greedy"], 2)
    if args.json:
        print(json.dumps(out))
        return
    print(f"threads {out['threads']} (CPU ms per call, median)")
    for name in args.shapes.split(","):
        for k, v in out[name].items():
            print(f"  {name:9s} {k:22s} {v}")


if __name__ == "__main__":
    main()
