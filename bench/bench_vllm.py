"""Serving with vLLM: vLLM + the Domino plugin vs vLLM + DFlash vs vLLM ngram vs vLLM target-only vs
our own decode loop, on the held-out prompts of bench_models, greedy, batch 1, on one CPU core each.

Every vLLM configuration runs in its own engine (``domino_kernels.integrations.vllm_offline``, vLLM's
default processes and graph compilation, ``VLLM_CPU_KVCACHE_SPACE=1``), one after another (the
machine holds one engine at a time); the model runs on one core (``VLLM_CPU_OMP_THREADS_BIND=0``),
our loop on 1 thread in this process. vLLM's front-end and engine-core processes (scheduling,
output handling) run beside its bound worker: that part is outside the one-core budget. Each
configuration decodes the prompts ``--repeats`` times after a warm-up pass; tokens/s comes from
the median pass; mean_tau is the mean over prompts of each prompt's τ (tokens per target step).
Speedups are against vLLM target-only (and, for our loop, also against our
target-only) measured in the same run. Every greedy output must equal vLLM's target-only output
(exit code 1 otherwise). Needs vLLM (scripts/vllm_env.sh)::

    .venv-vllm/bin/python -m bench.bench_vllm [--prompts 8] [--max-new-tokens 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.bench_models import DEFAULT_ROOT, heldout_prompts
from bench.harness import finish, print_table

K = 15  # num_speculative_tokens for every speculative configuration (the drafters' block: 1 + 15)


def vllm_configs(root: str) -> list[tuple[str, dict | None]]:
    def dflash(draft):
        return {"method": "dflash", "model": os.path.join(root, draft), "num_speculative_tokens": K}

    return [("target-only", None),
            ("ngram", {"method": "ngram", "num_speculative_tokens": K, "prompt_lookup_max": 4,
                       "prompt_lookup_min": 2}),
            ("DFlash", dflash("draft-dflash")),
            ("Domino (plugin)", dflash("draft-domino"))]


def run_vllm(root, spec_cfg, prompts, args) -> dict:
    run = {"prompts": prompts, "max_tokens": args.max_new_tokens, "batch": "each"}
    spec = {"target": os.path.join(root, "target"), "dtype": args.dtype, "speculative_config": spec_cfg,
            "runs": [dict(run, prompts=prompts[:1], max_tokens=16), dict(run, repeats=args.repeats)]}
    # vLLM's default process layout: front end, engine core and one worker whose compute threads
    # are bound to --cores. (With the engine in the front end's process, VLLM_ENABLE_V1_MULTIPROCESSING=0,
    # the bound OpenMP threads share their core with the Python thread: over ten times slower.)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=args.cores)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec, f)
        r = subprocess.run([sys.executable, "-m", "domino_kernels.integrations.vllm_offline",
                            os.path.join(d, "spec.json"), os.path.join(d, "out.json")],
                           env=env, cwd=repo, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-3000:] + r.stderr[-6000:])
            raise SystemExit(f"vLLM engine failed for {spec_cfg}")
        with open(os.path.join(d, "out.json")) as f:
            out = json.load(f)
    timed = out["runs"][1]
    return {"tokens": timed["tokens"], "taus": timed["tau"], "seconds": timed["seconds"],
            "startup_s": out["startup_s"]}


def run_ours(target, draft, prompts, args) -> dict:
    from domino_kernels.generate import generate

    def one_pass():
        toks, taus = [], []
        for p in prompts:
            # the fixed policy drafts K tokens every step, as vLLM does (same τ per prompt)
            r = generate(target, [p], draft=draft, max_new_tokens=args.max_new_tokens, ignore_eos=True,
                         num_proposals=K if draft is not None else None, spec_policy="fixed")
            toks.append(r.tokens[0])
            taus.append(r.stats["tau"])
        return toks, taus

    generate(target, [prompts[0]], draft=draft, max_new_tokens=16, ignore_eos=True, spec_policy="fixed")  # warm-up
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        toks, taus = one_pass()
        seconds.append(time.perf_counter() - t0)
    return {"tokens": toks, "taus": taus, "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="directory with target/, draft-domino/, draft-dflash/")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cores", default="0", help="VLLM_CPU_OMP_THREADS_BIND for the engines (default: core 0)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import vllm

    from domino_kernels.model.config import parse_dtype
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    root = os.path.abspath(args.root)
    prompts = heldout_prompts(os.path.join(root, "target", "tokenizer.json"), args.prompts, args.prompt_len)
    new_tokens = len(prompts) * args.max_new_tokens
    results = {}
    for name, cfg in vllm_configs(root):
        results["vLLM " + name] = run_vllm(root, cfg, prompts, args)
        print(f"vLLM {name}: done", file=sys.stderr)
    dtype = parse_dtype(args.dtype)
    target = load_qwen3(os.path.join(root, "target"), dtype=dtype)
    for name, draft in (("target-only", None), ("DFlash", "draft-dflash"), ("Domino", "draft-domino")):
        d = load_draft(os.path.join(root, draft), target, dtype=dtype) if draft else None
        results["ours " + name] = run_ours(target, d, prompts, args)
        print(f"ours {name}: done", file=sys.stderr)

    ref = results["vLLM target-only"]
    tps = {k: new_tokens / statistics.median(r["seconds"]) for k, r in results.items()}
    rows, ok = [], True
    for key, r in results.items():
        same = r["tokens"] == ref["tokens"]
        ok &= same
        ours_base = tps["ours target-only"] if key.startswith("ours") else None
        rows.append({"engine": key.split(" ", 1)[0], "drafting": key.split(" ", 1)[1],
                     "mean_tau": statistics.mean(r["taus"]) if r["taus"] else 1.0, "tok_per_s": tps[key],
                     "vs_vllm_target_only": tps[key] / tps["vLLM target-only"],
                     "vs_own_target_only": tps[key] / (ours_base or tps["vLLM target-only"]),
                     "greedy_equal": same, "pass_s": r["seconds"], "tau_per_prompt": r["taus"],
                     "startup_s": r.get("startup_s")})
    same_tau = {name: all(abs(a - b) < 1e-9
                          for a, b in zip(results[f"vLLM {v}"]["taus"], results[f"ours {name}"]["taus"]))
                for name, v in (("Domino", "Domino (plugin)"), ("DFlash", "DFlash"))}
    print(f"{len(prompts)} held-out prompts x {args.max_new_tokens} new tokens, batch 1, greedy, {args.dtype}, "
          f"one core each (vLLM {vllm.__version__}, VLLM_CPU_OMP_THREADS_BIND={args.cores}; ours 1 thread), "
          f"K={K}, median of {args.repeats} passes")
    print_table(rows, ["engine", "drafting", "mean_tau", "tok_per_s", "vs_vllm_target_only", "vs_own_target_only",
                       "greedy_equal"])
    print(f"τ per prompt identical in vLLM and our loop: {same_tau}")
    return finish("vllm", rows, {"vllm": vllm.__version__, "prompts": len(prompts),
                                 "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
                                 "repeats": args.repeats, "dtype": args.dtype, "cores": args.cores,
                                 "num_speculative_tokens": K, "tau_per_prompt_identical": same_tau}, ok,
                  "a greedy output differs from vLLM target-only decoding")


if __name__ == "__main__":
    sys.exit(main())
