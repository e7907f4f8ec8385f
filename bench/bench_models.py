"""End-to-end decoding with the trained pair: Domino vs DFlash-only vs target-only.

Held-out prompts (the first tokens of held-out standard-library files, never trained on by the
tokenizer, the target or the drafters) are decoded one request at a time with
``domino_kernels.generate.generate``, greedy (T=0) and sampled (T=0.7, 1), with chain and tree
drafting under the fixed and the adaptive speculation policy. Reports the verify rule, τ (mean
tokens emitted per drafted step, bonus included; at T>0 for fixed-policy chains also τ of the
target-only rule on the same drafts, from a second, untimed run), how many steps drafted, tokens/s and the speedup over target-only decoding at
the same temperature (in the JSON also per prompt), all measured in this process (on a single-threaded CPU run in CPU seconds of
the process, which other jobs on a shared machine do not inflate). At T=0 every speculative output must equal
the target-only output token for token (the script exits non-zero otherwise).

    python -m bench.bench_models [--root domino_kernels/assets/default] [--prompts 8]
                                 [--max-new-tokens 128] [--tree-topk 4 --tree-budget 32]
                                 [--temperatures 0,0.7,1] [--repeats 1] [--device cpu|cuda] [--threads 1]
                                 [--dtype float32|bfloat16 (default: the checkpoint's)]
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time

import torch

from bench.harness import finish, print_table

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


CONFIGS = [  # (label, drafter, drafting, spec_policy, use_head)
    ("target-only", None, "-", "-", True),
    ("Domino", "domino", "chain", "fixed", True),
    ("Domino", "domino", "chain", "adaptive", True),
    ("Domino", "domino", "tree", "fixed", True),
    ("Domino", "domino", "tree", "adaptive", True),
    ("DFlash-only", "dflash", "chain", "fixed", True),
    ("DFlash-only", "dflash", "chain", "adaptive", True),
]


def decode_one(target, prompt, *, draft, temperature, seed, max_new, drafting, policy, use_head, args,
               compare=None):
    from domino_kernels.generate import generate

    tree = drafting == "tree"
    return generate(target, [prompt], draft=draft, max_new_tokens=max_new, temperature=temperature, seed=seed,
                    ignore_eos=True, use_head=use_head, tree_topk=args.tree_topk if tree else 0,
                    tree_budget=args.tree_budget if tree else 0,
                    spec_policy=policy if draft is not None else "adaptive", compare_rule=compare)


def dominant_line_share(text: str) -> tuple[float, int]:
    """(share, count) of the most frequent non-blank line (stripped) among the non-blank lines of
    ``text``. A continuation counts as a loop when one line makes up at least half of its lines
    and occurs at least 3 times (``is_loop``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return 0.0, 0
    count = max(lines.count(ln) for ln in set(lines))
    return count / len(lines), count


def is_loop(text: str) -> bool:
    return _dominated(*dominant_line_share(text))


def _dominated(share: float, count: int) -> bool:
    """The loop rule of :func:`is_loop` on ``dominant_line_share``'s result."""
    return share >= 0.5 and count >= 3


def greedy_loops(tokenizer_path: str, outputs: list) -> dict:
    """How many of the target's greedy continuations are dominated by one repeated line."""
    from domino_kernels.train.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    shares = [dominant_line_share(tok.decode(ids)) for ids in outputs]
    return {"loops": sum(_dominated(s, c) for s, c in shares), "prompts": len(outputs),
            "dominant_line_share": [round(s, 3) for s, _ in shares]}


def run_clock(args):
    """CPU seconds of this process on a single-threaded CPU run: other jobs on a shared machine
    delay the wall clock, not this process's CPU time (wall time elsewhere)."""
    return time.process_time if args.device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def run_temperature(target, drafts, prompts, temp, args):
    """Every configuration on every prompt, prompt-major (the configurations of one prompt run
    back to back, so machine load drifts hit them alike, in a random order). Returns one row per
    configuration."""
    clock = run_clock(args)
    acc = {i: {"tokens": [], "secs": 0.0, "new": 0, "steps": 0, "drafted_steps": 0, "tau_w": 0.0,
               "cmp_w": 0.0, "cmp_n": 0, "rule": "-", "runs": {}, "p_tau_w": [0.0] * len(prompts),
               "p_drafted": [0] * len(prompts)} for i in range(len(CONFIGS))}
    for rep, (j, p) in [(r, jp) for r in range(args.repeats) for jp in enumerate(prompts)]:
        # the configurations run in a seeded random order per prompt and repeat (a rotation
        # would keep every configuration's predecessor fixed: each adaptive row always right
        # after its fixed twin), and the garbage of one run is collected before the next is timed
        for i in random.Random(f"{args.seed}/{rep}/{j}").sample(range(len(CONFIGS)), len(CONFIGS)):
            _, drafter, drafting, policy, use_head = CONFIGS[i]
            draft = drafts[drafter] if drafter else None
            gc.collect()
            t0 = clock()
            res = decode_one(target, p, draft=draft, temperature=temp, seed=args.seed + j, max_new=args.max_new_tokens,
                             drafting=drafting, policy=policy, use_head=use_head, args=args)
            a, st = acc[i], res.stats
            secs = clock() - t0
            a["secs"] += secs
            a["runs"][rep, j] = st["new_tokens"] / secs
            if rep == 0:
                a["tokens"].append(res.tokens[0])
            elif temp == 0.0 and res.tokens[0] != a["tokens"][j]:
                a["unstable"] = True          # a greedy output must not change between repeats
            a["new"] += st["new_tokens"]
            a["steps"] += st["steps"]
            drafted = st["steps"] - int(st.get("draft_lengths", {}).get("0", 0)) if draft is not None else 0
            a["drafted_steps"] += drafted
            a["tau_w"] += st["tau"] * drafted
            a["p_tau_w"][j] += st["tau"] * drafted
            a["p_drafted"][j] += drafted
            a["rule"] = st.get("rule", "-")
            if rep == 0 and draft is not None and temp > 0 and drafting == "chain" and policy == "fixed":
                # τ of the target-only rule on the very same drafts (the fixed policy and the seed
                # fix them): a second, untimed run that verifies every step both ways
                cmp = decode_one(target, p, draft=draft, temperature=temp, seed=args.seed + j,
                                 max_new=args.max_new_tokens, drafting=drafting, policy=policy,
                                 use_head=use_head, args=args, compare="target_only")
                assert cmp.tokens == res.tokens
                a["cmp_w"] += cmp.stats["compare_tau"] * drafted
                a["cmp_n"] += drafted
    base = acc[0]
    rows = []
    for i, (label, drafter, drafting, policy, _) in enumerate(CONFIGS):
        a = acc[i]
        tps = a["new"] / a["secs"]
        same = "-"
        if temp == 0.0 and drafter:
            same = a["tokens"] == base["tokens"] and not a.get("unstable") and not base.get("unstable")
        drafted = a["drafted_steps"]
        rows.append({"T": temp, "drafter": label, "drafting": drafting, "policy": policy, "rule": a["rule"],
                     "tau": a["tau_w"] / drafted if drafted else (1.0 if not drafter else None),
                     "tau_target_only_rule": a["cmp_w"] / a["cmp_n"] if a["cmp_n"] else None,
                     "drafted_steps": f"{drafted}/{a['steps']}" if drafter else "-",
                     "tok_per_s": tps, "speedup": tps / (base["new"] / base["secs"]),
                     # each run against the target-only run of the same prompt and repeat (a few
                     # seconds apart), median over the runs: robust to the machine's speed drifting
                     "speedup_paired_median": statistics.median(a["runs"][k] / base["runs"][k] for k in base["runs"]),
                     "greedy_equal": same,
                     # per prompt: τ and drafted steps over the repeats, median paired speedup
                     "by_prompt": [{"tau": round(a["p_tau_w"][j] / a["p_drafted"][j], 3) if a["p_drafted"][j] else None,
                                    "drafted_steps": a["p_drafted"][j],
                                    "speedup_paired_median": round(statistics.median(
                                        a["runs"][r, j] / base["runs"][r, j] for r in range(args.repeats)), 3)}
                                   for j in range(len(prompts))]})
        print(f"T={temp} {label} {drafting} {policy}: {rows[-1]}", file=sys.stderr)
    return rows, base["tokens"]


def target_only_by_dtype(target, root, prompts, args) -> dict:
    """Greedy target-only tokens/s in the run's dtype and in float32, interleaved prompt by prompt
    (the same clock as the table): which dtype is the faster baseline on this machine."""
    from domino_kernels.model.qwen3 import load_qwen3

    models = {args.dtype: target}
    if args.dtype != "float32":
        models["float32"] = load_qwen3(os.path.join(root, "target"), dtype=torch.float32, device=args.device)
    clock = run_clock(args)
    secs = {k: 0.0 for k in models}
    new = dict.fromkeys(models, 0)
    for rep in range(args.repeats):
        for j, p in enumerate(prompts):
            for name in (list(models) if (j + rep) % 2 == 0 else list(models)[::-1]):
                gc.collect()
                t0 = clock()
                res = decode_one(models[name], p, draft=None, temperature=0.0, seed=0, max_new=args.max_new_tokens,
                                 drafting="-", policy="-", use_head=True, args=args)
                secs[name] += clock() - t0
                new[name] += res.stats["new_tokens"]
    out = {name: new[name] / secs[name] for name in models}
    print("target-only greedy tokens/s by dtype: " + ", ".join(f"{k} {v:.0f}" for k, v in out.items()),
          file=sys.stderr)
    return out


def step_costs(drafts) -> list:
    """The adaptive policies' measured step costs (batch 1) after the runs."""
    out = []
    for name, draft in drafts.items():
        for key, policy in draft.policies.items():
            c = policy.costs
            if c.known():
                tree = f"tree k{key[1]} m{key[2]}" if key[1] else "chain"
                out.append({"config": f"{name} {tree}, T={key[5]}", "plain_s": c.plain, "draft_s": c.draft,
                            "verify_per_token_s": c.verify_per_token})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="directory with target/, draft-domino/, draft-dflash/")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tree-topk", type=int, default=4,
                    help="tree rows: fan-out (a budget within the block is drafted as the chain it equals)")
    ap.add_argument("--tree-budget", type=int, default=32)
    ap.add_argument("--temperatures", default="0,0.7,1")
    ap.add_argument("--repeats", type=int, default=1,
                    help="decode every prompt this many times per configuration (timing noise shrinks; "
                         "steps and τ are summed over the repeats)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine a second OpenMP thread mostly spin-waits")
    ap.add_argument("--dtype", default=None,
                    help="compute dtype (default: the checkpoint's, bfloat16 for the default pair, as the CLI "
                         "runs it; target-only decoding is also measured in float32 for reference)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from domino_kernels.model.config import parse_dtype
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    root = os.path.abspath(args.root)
    target = load_qwen3(os.path.join(root, "target"), dtype=parse_dtype(args.dtype) if args.dtype else None,
                        device=args.device)
    dtype = target.dtype
    args.dtype = str(dtype).replace("torch.", "")
    drafts = {k: load_draft(os.path.join(root, f"draft-{k}"), target, dtype=dtype) for k in ("domino", "dflash")}
    prompts = heldout_prompts(os.path.join(root, "target", "tokenizer.json"), args.prompts, args.prompt_len)
    temps = [float(t) for t in args.temperatures.split(",")]
    # warm-up outside the timed runs: first-call allocations and lazy imports, and the adaptive
    # policies' calibration (their measured step costs and acceptance carry over, per draft and
    # configuration, like a server's warm-up requests)
    for temp in temps:
        for _, drafter, drafting, policy, use_head in CONFIGS:
            decode_one(target, prompts[-1], draft=drafts[drafter] if drafter else None, temperature=temp, seed=99,
                       max_new=32, drafting=drafting, policy=policy, use_head=use_head, args=args)

    baselines = target_only_by_dtype(target, root, prompts, args)
    rows, loops = [], None
    for temp in temps:
        got, outputs = run_temperature(target, drafts, prompts, temp, args)
        rows += got
        if temp == 0.0:
            loops = greedy_loops(os.path.join(root, "target", "tokenizer.json"), outputs)
            print(f"target-only greedy continuations dominated by one repeated line: {loops['loops']} of "
                  f"{loops['prompts']} (shares {loops['dominant_line_share']})")
    ok = all(r["greedy_equal"] in ("-", True) for r in rows)
    costs = step_costs(drafts)
    for c in costs:
        print(f"measured step costs ({c['config']}): plain {1e3 * c['plain_s']:.2f} ms, draft "
              f"{1e3 * c['draft_s']:.2f} ms, verify +{1e3 * c['verify_per_token_s']:.3f} ms per drafted token")
    cols = ["T", "drafter", "drafting", "policy", "rule", "tau", "tau_target_only_rule", "drafted_steps",
            "tok_per_s", "speedup", "speedup_paired_median", "greedy_equal"]
    print(f"{len(prompts)} held-out prompts x {args.max_new_tokens} new tokens, batch 1, {args.device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads; tree: top-{args.tree_topk}, "
          f"{args.tree_budget} nodes; tau over drafted steps")
    print_table(rows, cols)
    return finish("models", rows, {"root": os.path.relpath(root), "prompts": len(prompts),
                                   "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                                   "tree_topk": args.tree_topk, "tree_budget": args.tree_budget,
                                   "dtype": args.dtype, "target_only_by_dtype": baselines, "step_costs": costs,
                                   "greedy_loops": loops}, ok,
                  "a greedy speculative output differs from target-only decoding", device=args.device)


if __name__ == "__main__":
    sys.exit(main())
