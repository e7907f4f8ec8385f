"""Run vLLM offline on token-id prompts and report the outputs, τ and the decode time of each run.

One engine per call of :func:`run_engine`, then one or more runs on it. A run decodes its prompts
one request at a time (``batch="each"``: τ per prompt from the deltas of vLLM's
speculative-decoding counters) or all together (``batch="all"``: one τ for the batch). Used by
tests/test_vllm_plugin.py and bench/bench_vllm.py, each in a fresh process (vLLM's CPU worker pins
threads and patches torch for the rest of the process)::

    python -m domino_kernels.integrations.vllm_offline SPEC.json OUT.json

SPEC keys: ``target`` (dir), optional ``speculative_config`` (vLLM's dict, e.g. ``{"method":
"dflash", "model": DIR, "num_speculative_tokens": 15}``), ``dtype`` ("float32"),
``max_model_len`` (1024), ``max_num_seqs`` (8), ``seed`` (0), ``enforce_eager`` (False: vLLM
compiles the model graphs at start-up, minutes on a small shared CPU) and ``runs``: a list of
``{"prompts": [[ids]], "max_tokens": N, "batch": "each"|"all", "temperature": 0.0, "seed": 0,
"repeats": 1}`` (``repeats`` decodes the prompts that many times, keeping every pass's seconds and
the last pass's outputs and τ).
OUT: ``{"runs": [{"tokens", "tau", "seconds"}], "startup_s", "domino_hooks"}``.
The caller sets vLLM's CPU environment (``VLLM_CPU_KVCACHE_SPACE``, ``VLLM_CPU_OMP_THREADS_BIND``).
"""
from __future__ import annotations

import json
import sys
import time

_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
             "vllm:spec_decode_num_accepted_tokens")


def _counters(llm) -> dict:
    out = dict.fromkeys(_COUNTERS, 0)
    for m in llm.get_metrics():
        if m.name in out:
            out[m.name] += int(m.value)
    return out


def _decode(llm, prompts, params, batch: str):
    """(tokens per prompt, τ per request group, seconds) for one pass over the prompts."""
    from vllm.inputs import TokensPrompt

    groups = [[p] for p in prompts] if batch == "each" else [list(prompts)]
    tokens, taus, secs = [], [], 0.0
    for group in groups:
        before = _counters(llm)
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in group], params, use_tqdm=False)
        secs += time.perf_counter() - t0
        after = _counters(llm)
        d = {k: after[k] - before[k] for k in _COUNTERS}
        steps = d["vllm:spec_decode_num_drafts"]
        # τ: tokens per verify step, bonus included (1 + accepted drafts per step); 1 without drafts
        taus.append(1.0 + d["vllm:spec_decode_num_accepted_tokens"] / steps if steps else 1.0)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    return tokens, taus, secs


def run_engine(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=spec["target"], skip_tokenizer_init=True, dtype=spec.get("dtype", "float32"),
              max_model_len=spec.get("max_model_len", 1024), max_num_seqs=spec.get("max_num_seqs", 8),
              speculative_config=spec.get("speculative_config"), disable_log_stats=False,
              seed=spec.get("seed", 0), enforce_eager=spec.get("enforce_eager", False))
    startup = time.perf_counter() - t0
    results = []
    for run in spec["runs"]:
        params = SamplingParams(temperature=run.get("temperature", 0.0), max_tokens=run["max_tokens"],
                                ignore_eos=True, detokenize=False, seed=run.get("seed", 0))
        seconds = []
        for _ in range(run.get("repeats", 1)):
            tokens, taus, secs = _decode(llm, run["prompts"], params, run.get("batch", "each"))
            seconds.append(secs)
        results.append({"tokens": tokens, "tau": taus, "seconds": seconds})
    return {"runs": results, "startup_s": startup, "domino_hooks": _domino_hooks_installed()}


def _domino_hooks_installed() -> bool:
    """Whether the Domino plugin hooked vLLM's DFlash proposer in this process (vLLM loads its
    general plugins in every process it starts, this one included)."""
    hooks = sys.modules.get("domino_kernels.integrations._vllm_v032")
    return bool(hooks is not None and hooks._ORIGINAL)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    out = run_engine(spec)
    with open(argv[1], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
