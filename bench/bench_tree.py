"""Dynamic Domino trees against the chain of the same verified size, on the shipped pair.

For every budget (nodes verified besides the anchor) and fan-out ``topk`` (= beam width), decodes
the held-out prompts one request at a time at T=0 with ``generate(..., tree_topk, tree_budget)``
and with the chain of ``min(budget, block cap)`` proposals, each prompt's chain and tree runs back
to back (so both see the same machine conditions), under the fixed speculation policy. Reports τ (tokens emitted per target verify
step, bonus included) overall and per prompt, tokens/s, and the tree / chain ratios. Every output
must equal target-only greedy decoding (exit status 1 otherwise).

    python -m bench.bench_tree [--root domino_kernels/assets/default] [--prompts 8]
                               [--max-new-tokens 128] [--budgets 8,16,32,64] [--topks 2,3,4]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from bench.bench_models import DEFAULT_ROOT, heldout_prompts
from bench.harness import finish, print_table


def decode(target, draft, prompt, *, max_new, **kw):
    from domino_kernels.generate import generate

    t0 = time.perf_counter()
    # The fixed policy drafts the full chain / tree every step: the comparison is of the drafts
    # themselves, not of the adaptive policy's timing-driven choices.
    res = generate(target, [prompt], draft=draft, max_new_tokens=max_new, temperature=0.0,
                   ignore_eos=True, spec_policy="fixed", **kw)
    secs = time.perf_counter() - t0
    st = res.stats
    return {"tokens": res.tokens[0], "steps": st["steps"], "new": st["new_tokens"], "secs": secs}


def summarise(runs):
    steps, new, secs = (sum(r[k] for r in runs) for k in ("steps", "new", "secs"))
    return {"tau": new / max(steps, 1), "tok_per_s": new / secs,
            "tau_per_prompt": [round(r["new"] / max(r["steps"], 1), 3) for r in runs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budgets", default="8,16,32,64")
    ap.add_argument("--topks", default="2,3,4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from domino_kernels.model.config import parse_dtype
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    root = os.path.abspath(args.root)
    dtype = parse_dtype(args.dtype)
    target = load_qwen3(os.path.join(root, "target"), dtype=dtype, device="cpu")
    draft = load_draft(os.path.join(root, "draft-domino"), target, dtype=dtype)
    prompts = heldout_prompts(os.path.join(root, "target", "tokenizer.json"), args.prompts, args.prompt_len)
    cap = draft.max_proposals()
    ref = [decode(target, None, p, max_new=args.max_new_tokens)["tokens"] for p in prompts]
    decode(target, draft, prompts[0], max_new=16, tree_topk=2, tree_budget=8)  # warm-up

    rows, ok = [], True
    for budget in [int(b) for b in args.budgets.split(",")]:
        for topk in [int(k) for k in args.topks.split(",")]:
            n_chain = min(budget, cap)
            chain, tree = [], []
            for p in prompts:
                chain.append(decode(target, draft, p, max_new=args.max_new_tokens, num_proposals=n_chain))
                tree.append(decode(target, draft, p, max_new=args.max_new_tokens, tree_topk=topk,
                                   tree_budget=budget))
            equal = [r["tokens"] for r in chain] == ref and [r["tokens"] for r in tree] == ref
            ok &= equal
            c, t = summarise(chain), summarise(tree)
            worst = min(tt / cc for tt, cc in zip(t["tau_per_prompt"], c["tau_per_prompt"]))
            rows.append({"budget": budget, "topk": topk, "chain_N": n_chain, "chain_tau": c["tau"],
                         "tree_tau": t["tau"], "tau_ratio": t["tau"] / c["tau"],
                         "worst_prompt_ratio": worst, "chain_tok_s": c["tok_per_s"],
                         "tree_tok_s": t["tok_per_s"], "tok_s_ratio": t["tok_per_s"] / c["tok_per_s"],
                         "chain_tau_per_prompt": c["tau_per_prompt"],
                         "tree_tau_per_prompt": t["tau_per_prompt"], "greedy_equal": equal})
            print(f"budget {budget} topk {topk}: tau {t['tau']:.2f} vs chain {c['tau']:.2f}", file=sys.stderr)
    print(f"{len(prompts)} held-out prompts x {args.max_new_tokens} new tokens, T=0, batch 1, cpu, "
          f"{args.dtype}, {torch.get_num_threads()} threads; chain of min(budget, {cap}) proposals")
    print_table(rows, ["budget", "topk", "chain_N", "chain_tau", "tree_tau", "tau_ratio",
                       "worst_prompt_ratio", "chain_tok_s", "tree_tok_s", "tok_s_ratio", "greedy_equal"])
    for r in rows:
        print(f"budget {r['budget']} topk {r['topk']}: per-prompt tau chain {r['chain_tau_per_prompt']} "
              f"tree {r['tree_tau_per_prompt']}")
    return finish("tree", rows, {"root": os.path.relpath(root), "prompts": len(prompts),
                                 "prompt_len": args.prompt_len,
                                 "max_new_tokens": args.max_new_tokens, "dtype": args.dtype}, ok,
                  "a speculative output differs from target-only greedy decoding")


if __name__ == "__main__":
    sys.exit(main())
