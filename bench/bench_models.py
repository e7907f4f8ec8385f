"""End-to-end decoding with the trained pair: Domino vs DFlash-only vs target-only.

Held-out prompts (the first tokens of held-out standard-library files, never trained on by the
tokenizer, the target or the drafters) are decoded one request at a time with
``domino_kernels.generate.generate``, greedy (T=0) and sampled (T=1), with chain drafting and tree
drafting. Reports τ (mean tokens emitted per target verify step, bonus included), tokens/s and
the speedup over target-only decoding at the same temperature, all measured in this process.
At T=0 every speculative output must equal the target-only output token for token (the script
exits non-zero otherwise).

    python -m bench.bench_models [--root domino_kernels/assets/default] [--prompts 8]
                                 [--max-new-tokens 128] [--tree-topk 2 --tree-budget 16]
                                 [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from bench.harness import print_table, write_results

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "domino_kernels", "assets", "default")


def heldout_prompts(tokenizer_path: str, n: int, length: int) -> list[list[int]]:
    """``[eos] + first length-1 tokens`` of the first ``n`` held-out files long enough (the eos
    is the document separator the target saw before every file)."""
    from domino_kernels.train import data
    from domino_kernels.train.tokenizer import EOS_ID, load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    out = []
    for text in data.read_texts(data.corpus_files("heldout")):
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) >= length:
            out.append([EOS_ID] + ids[: length - 1])
        if len(out) == n:
            break
    return out


def run(target, prompts, *, draft, temperature, seed, max_new, tree, args, use_head=True):
    from domino_kernels.generate import generate

    tokens, steps, taus, new, secs = [], 0, [], 0, 0.0
    for i, p in enumerate(prompts):
        t0 = time.perf_counter()
        res = generate(target, [p], draft=draft, max_new_tokens=max_new, temperature=temperature,
                       seed=seed + i, ignore_eos=True, use_head=use_head,
                       tree_topk=args.tree_topk if tree else 0, tree_budget=args.tree_budget if tree else 0)
        secs += time.perf_counter() - t0
        tokens.append(res.tokens[0])
        st = res.stats
        steps += st["steps"]
        new += st["new_tokens"]
        taus.append(st.get("tau", 1.0) * st["steps"])
    return {"tokens": tokens, "tau": sum(taus) / max(steps, 1), "new_tokens": new, "seconds": secs,
            "tokens_per_s": new / secs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="directory with target/, draft-domino/, draft-dflash/")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tree-topk", type=int, default=2)
    ap.add_argument("--tree-budget", type=int, default=16)
    ap.add_argument("--temperatures", default="0,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine a second OpenMP thread mostly spin-waits")
    ap.add_argument("--dtype", default="float32", help="weights are shipped in bf16; compute dtype")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from domino_kernels.model.config import parse_dtype
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    root = os.path.abspath(args.root)
    dtype = parse_dtype(args.dtype)
    target = load_qwen3(os.path.join(root, "target"), dtype=dtype, device=args.device)
    drafts = {k: load_draft(os.path.join(root, f"draft-{k}"), target, dtype=dtype) for k in ("domino", "dflash")}
    prompts = heldout_prompts(os.path.join(root, "target", "tokenizer.json"), args.prompts, args.prompt_len)
    # warm-up (first-call allocations, lazy imports) outside the timed runs
    run(target, prompts[:1], draft=drafts["domino"], temperature=0.0, seed=0, max_new=16, tree=False, args=args)

    rows, ok = [], True
    for temp in [float(t) for t in args.temperatures.split(",")]:
        base = run(target, prompts, draft=None, temperature=temp, seed=args.seed,
                   max_new=args.max_new_tokens, tree=False, args=args)
        rows.append({"T": temp, "drafter": "target-only", "drafting": "-", "tau": 1.0,
                     "tok_per_s": base["tokens_per_s"], "speedup": 1.0, "greedy_equal": "-"})
        configs = [("domino", "chain", True), ("dflash", "chain", True), ("domino", "tree", True),
                   ("dflash", "tree", True), ("domino-backbone", "chain", False)]
        for name, drafting, use_head in configs:
            draft = drafts["domino" if name.startswith("domino") else "dflash"]
            r = run(target, prompts, draft=draft, temperature=temp, seed=args.seed,
                    max_new=args.max_new_tokens, tree=drafting == "tree", args=args, use_head=use_head)
            same = "-"
            if temp == 0.0:
                same = r["tokens"] == base["tokens"]
                ok &= same
            rows.append({"T": temp, "drafter": name, "drafting": drafting, "tau": r["tau"],
                         "tok_per_s": r["tokens_per_s"], "speedup": r["tokens_per_s"] / base["tokens_per_s"],
                         "greedy_equal": same})
            print(f"T={temp} {name} {drafting}: tau {r['tau']:.2f}, {r['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    cols = ["T", "drafter", "drafting", "tau", "tok_per_s", "speedup", "greedy_equal"]
    print(f"{len(prompts)} held-out prompts x {args.max_new_tokens} new tokens, batch 1, {args.device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads; tree: top-{args.tree_topk}, "
          f"{args.tree_budget} nodes")
    print_table(rows, cols)
    path = write_results("models", rows, {"root": os.path.relpath(root), "prompts": len(prompts),
                                          "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
                                          "tree_topk": args.tree_topk, "tree_budget": args.tree_budget,
                                          "dtype": args.dtype}, device=args.device)
    print(f"wrote {path}")
    if not ok:
        print("ERROR: a greedy speculative output differs from target-only decoding", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
