"""``python -m domino_kernels <command>``.

Commands:
  generate  decode with a Qwen3 checkpoint, speculatively with a DFlash/Domino draft checkpoint
  demo      the same decode on the embedded trained pair (a build without it falls back to a tiny
            random target + Domino draft created deterministically under --cache-dir),
            speculative and target-only: the prompt, the continuation with each step's accepted
            draft tokens marked (domino_kernels/show.py), and the summary
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .show import COLOR_CHOICES


def _set_threads(args, hidden_size: int) -> None:
    """CPU intra-op threads. Default: 1 for small models (H <= 1024), whose matmuls are too small
    to share: a second OpenMP thread mostly spin-waits, and on a busy machine that costs 2-100x."""
    import torch

    if args.device == "cpu":
        n = args.threads if args.threads else (1 if hidden_size <= 1024 else torch.get_num_threads())
        torch.set_num_threads(n)


def _load(args):
    import torch

    from .model.config import parse_dtype
    from .model.dflash import load_draft
    from .model.qwen3 import load_qwen3

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is available")
    dtype = parse_dtype(args.dtype) if args.dtype else None
    target = load_qwen3(args.target, dtype=dtype, device=args.device)
    _set_threads(args, target.cfg.hidden_size)
    draft = None if args.no_draft else load_draft(args.draft, target)
    return target, draft


def _prompt_ids(args, tok) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise SystemExit(f"error: --prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    if tok is None:
        raise SystemExit("error: the target has no tokenizer.json (or `tokenizers` is not installed): "
                         "pass --prompt-ids")
    return tok.encode(args.prompt)


def run_generate(args) -> int:
    from .generate import generate
    from .model.config import CheckpointError
    from .tokenizer import load_tokenizer

    if not args.no_draft and not args.draft:
        raise SystemExit("error: pass --draft DIR, or --no-draft for target-only decoding")
    try:
        target, draft = _load(args)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    tok = load_tokenizer(args.target)
    prompt = _prompt_ids(args, tok)
    progress = None
    if not args.json:
        print(f"target {args.target} ({target.cfg.num_hidden_layers} layers, H={target.cfg.hidden_size}, "
              f"{target.dtype}, {args.device}); draft: {args.draft if draft else 'none'}; "
              f"prompt {len(prompt)} tokens", file=sys.stderr)
        progress = lambda step, n: print(f"\rstep {step}: {n} tokens", end="", file=sys.stderr)  # noqa: E731
    try:
        res = generate(target, [prompt], draft=draft, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                       ignore_eos=args.ignore_eos, num_proposals=args.num_proposals,
                       tree_topk=args.tree_topk, tree_budget=args.tree_budget,
                       use_head=not args.dflash_only, trace=args.trace, on_step=progress,
                       spec_policy=args.spec_policy, draft_temperature=args.draft_temperature)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    tokens = res.tokens[0]
    text = tok.decode(tokens) if tok is not None else None
    st = res.stats
    if args.json:
        out = {"tokens": tokens, "stats": st}
        if text is not None:
            out["text"] = text
        if args.trace:
            out["trace"] = [{"step": i, "draft": r["draft"][0], "accepted": r["accepted"][0],
                             **({"parents": r["parents"][0]} if "parents" in r else {})}
                            for i, r in enumerate(res.trace or [])]
        print(json.dumps(out))
        return 0
    print("", file=sys.stderr)
    print(text if text is not None else " ".join(map(str, tokens)))
    if args.trace:
        for i, r in enumerate(res.trace or []):
            print(f"step {i}: draft {r['draft'][0]} accepted {r['accepted'][0]}", file=sys.stderr)
    print(summary_line(st))
    return 0


def summary_line(st: dict) -> str:
    share = ""
    if st["mode"] != "target-only":
        busy = st["draft_s"] + st["verify_s"] + st["bookkeeping_s"]
        share = (f", draft {100 * st['draft_s'] / busy:.0f}% / verify {100 * st['verify_s'] / busy:.0f}% / "
                 f"bookkeeping {100 * st['bookkeeping_s'] / busy:.0f}%") if busy > 0 else ""
    mode = st["mode"] if st["mode"] == "target-only" else f"{st['mode']}; verified by {st['rule']}; {st['spec_policy']} policy"
    return (f"[{mode}] {st['new_tokens']} tokens in {st['total_s']:.2f} s: "
            f"{st['tokens_per_s']:.1f} tokens/s, tau {st['tau']:.2f} over {st['steps']} steps{share}")


def _embedded_pair():
    """The project's trained pair (``domino_kernels.assets``) when this build ships it."""
    try:
        from .assets import default_draft_dir, default_target_dir
    except ImportError:
        return None
    target, draft = default_target_dir(), default_draft_dir("domino")
    if all(os.path.exists(os.path.join(d, "config.json")) for d in (target, draft)):
        return target, draft
    return None


def run_demo(args) -> int:
    from .generate import generate
    from .model.dflash import load_draft
    from .model.qwen3 import load_qwen3
    from .model.synthetic import ensure_demo_pair
    from .tokenizer import load_tokenizer

    embedded = _embedded_pair()
    if embedded is not None:
        target_dir, draft_dir = embedded
        note = "the embedded trained pair"
    else:
        target_dir, draft_dir = ensure_demo_pair(args.cache_dir)
        note = (f"a tiny random Qwen3 target + Domino draft under {args.cache_dir} (this build ships "
                f"no trained pair; a random draft is rarely right, so expect tau near 1)")
    target = load_qwen3(target_dir, device=args.device)
    _set_threads(args, target.cfg.hidden_size)
    draft = load_draft(draft_dir, target)
    tok = load_tokenizer(target_dir)
    prompt = tok.encode(args.prompt) if tok is not None else list(range(1, 17))
    # One short untimed call of each first: the timed runs then compare steady states (the first
    # call pays one-time costs, and the adaptive policy measures its step costs there).
    warm = min(16, args.max_new_tokens)
    generate(target, [prompt], draft=draft, max_new_tokens=warm, ignore_eos=True, spec_policy=args.spec_policy)
    generate(target, [prompt], max_new_tokens=warm, ignore_eos=True)
    spec = generate(target, [prompt], draft=draft, max_new_tokens=args.max_new_tokens, ignore_eos=True,
                    spec_policy=args.spec_policy)
    plain = generate(target, [prompt], max_new_tokens=args.max_new_tokens, ignore_eos=True)
    report = demo_report(spec, plain, prompt, tok, note)
    same = report["equal_to_target_only"]
    if args.json:
        print(json.dumps(report))
        return 0 if same else 1
    from .show import legend, printable, render, use_color

    color = use_color(args.color, sys.stdout)
    pieces = [(s["accepted_text"], s["target_text"]) for s in report["spans"]]
    print(f"demo: {note}; greedy, {len(spec.tokens[0])} new tokens")
    print(f"prompt ({len(prompt)} tokens):")
    print(printable(report["prompt"]))
    print(f"continuation ({legend(color)}):")
    print(render(pieces, color))
    print(summary_line(plain.stats))
    print(summary_line(spec.stats))
    print(f"speculative output == target-only greedy output: {same}; speedup "
          f"{report['speedup']:.2f}x at tau {spec.stats['tau']:.2f}")
    return 0 if same else 1


def demo_report(spec, plain, prompt: list, tok, note: str) -> dict:
    """The demo's JSON object: the prompt, the speculative continuation and its per-step spans
    (``accepted_ids``: draft tokens the target accepted, ``target_ids``: the target's own token;
    the first span is the prefill's token), both runs' tokens/s and stats, tau, the verification
    rule, the policy and whether the greedy speculative output equals the target-only output.
    Without a tokenizer the texts are the ids, each followed by a space."""
    from .show import ids_text, span_texts, split_spans

    decode = tok.decode if tok is not None else ids_text
    tokens = spec.tokens[0]
    parts = split_spans(tokens, spec.spans[0])
    texts = span_texts(decode, parts)
    st, pst = spec.stats, plain.stats
    return {"pair": note, "prompt": decode(prompt), "prompt_ids": prompt,
            "continuation": "".join(a + b for a, b in texts), "continuation_ids": tokens,
            "spans": [{"depth": s.depth, "accepted_ids": a, "target_ids": b, "accepted_text": at,
                       "target_text": bt} for s, (a, b), (at, bt) in zip(spec.spans[0], parts, texts)],
            "target_only_tokens_per_s": pst["tokens_per_s"], "speculative_tokens_per_s": st["tokens_per_s"],
            "speedup": st["tokens_per_s"] / max(pst["tokens_per_s"], 1e-9), "tau": st["tau"],
            "mode": st["mode"], "rule": st["rule"], "spec_policy": st["spec_policy"],
            "equal_to_target_only": spec.tokens == plain.tokens,
            "stats": {"target_only": pst, "speculative": st}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domino_kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="decode with a Qwen3 target and a DFlash/Domino draft")
    g.add_argument("--target", required=True, help="Hugging Face Qwen3 checkpoint directory")
    g.add_argument("--draft", help="DFlash/Domino draft checkpoint directory")
    g.add_argument("--no-draft", action="store_true", help="target-only decoding")
    g.add_argument("--dflash-only", action="store_true", help="ignore the Domino head (plain DFlash)")
    p = g.add_mutually_exclusive_group(required=True)
    p.add_argument("--prompt", help="prompt text (needs the target's tokenizer.json)")
    p.add_argument("--prompt-ids", help="prompt token ids, comma separated: 1,2,3")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--num-proposals", type=int, default=None, help="chain length (default: the draft's)")
    g.add_argument("--tree-topk", type=int, default=0,
                   help="tree drafting: children per expanded node and nodes expanded per depth (beam)")
    g.add_argument("--tree-budget", type=int, default=0,
                   help="tree drafting: nodes verified besides the anchor (the best of all candidates)")
    g.add_argument("--spec-policy", default="adaptive", choices=["adaptive", "fixed"],
                   help="adaptive: per step the draft length (0 = a plain target step) with the most "
                        "expected tokens/s; fixed: always the full draft (docs/decode.md)")
    g.add_argument("--draft-temperature", type=float, default=None,
                   help="temperature of sampled chain drafts at --temperature > 0 (default: the same; "
                        "0: greedy drafts, verified by the target-only rule)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the config's)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: 1 for small models, else torch's default)")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--trace", action="store_true", help="record each step's draft and acceptance")
    g.set_defaults(func=run_generate)
    d = sub.add_parser("demo", help="decode on the embedded default pair: the prompt, the continuation with "
                                    "each step's accepted draft tokens marked, and the summary")
    d.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "domino_kernels",
                                                       "demo-v1"))
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--prompt", default='class Point:\n    """A point in the plane."""\n\n    def __init__(self, x, y):',
                   help="used when the pair has a tokenizer")
    # fixed by default: the demo is there to show drafting at work; the adaptive policy (generate's
    # default) mostly takes plain target steps on the tiny embedded target, where a draft + verify
    # step costs about as much as two or three target steps (docs/decode.md)
    d.add_argument("--spec-policy", default="fixed", choices=["adaptive", "fixed"],
                   help="as for generate (default fixed: every step drafts, the same spans every run)")
    d.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    d.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: 1 for small models, else torch's default)")
    d.add_argument("--color", default="auto", choices=COLOR_CHOICES,
                   help="mark accepted draft tokens green (auto: when stdout is a terminal and NO_COLOR "
                        "is unset); without colour they stand between \u27e6 and \u27e7")
    d.add_argument("--no-color", dest="color", action="store_const", const="never", help="same as --color never")
    d.add_argument("--json", action="store_true",
                   help="print one JSON object: prompt, continuation, per-step spans, tokens/s, tau, rule, "
                        "policy, equality with target-only")
    d.set_defaults(func=run_demo)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
