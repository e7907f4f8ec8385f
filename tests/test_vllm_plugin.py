"""The vLLM plugin (domino_kernels.integrations.vllm) on vLLM's CPU build, with the default pair.

Checked against our own decode loop, run live in this process (so the checks hold for any
retrained pair): greedy vLLM + Domino output == target-only output; τ per prompt == our loop's τ,
for the Domino drafter and the DFlash-only drafter; a batch of 4 ragged prompts; sampled drafting
(T > 0) with draft probabilities; the plugin inert for a DFlash-only run (same tokens and τ as
with the plugin disabled). Every engine runs in a subprocess
(``python -m domino_kernels.integrations.vllm_offline``); the engine tests are skipped where vLLM
is not importable (``scripts/vllm_env.sh`` creates .venv-vllm, docs/vllm.md has the command).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from domino_kernels.integrations import vllm as plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "domino_kernels", "assets", "default")
TARGET = os.path.join(ASSETS, "target")
K = 15              # num_speculative_tokens: a block of 1 + K = 16 slots, the drafters' block_size
MAX_TOKENS = 32
N_PROMPTS = 3
RAGGED_LENS = (48, 9, 30, 17)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not importable (scripts/vllm_env.sh creates .venv-vllm)")


def test_supported_versions():
    assert plugin.is_supported_version("0.32.0")
    assert plugin.is_supported_version("0.32.0+cpu")
    assert not plugin.is_supported_version("0.32.1")
    assert not plugin.is_supported_version("0.31.0")
    msg = plugin.unsupported_message("0.33.0")
    assert "0.33.0" in msg and "0.32.0" in msg


def _engine_env(plugins: bool = True) -> dict:
    # one core, a small KV cache, the engine in the caller's process (with enforce_eager: no graph
    # compilation), so an engine starts in about a minute instead of several on a small shared CPU
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0",
               VLLM_ENABLE_V1_MULTIPROCESSING="0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not plugins:
        env["VLLM_PLUGINS"] = ""   # vLLM loads only the plugins named here: none
    return env


def _run_engine(tmp_path_factory, name: str, spec: dict, plugins: bool = True) -> dict:
    d = tmp_path_factory.mktemp(name)
    spec_path, out_path = d / "spec.json", d / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = _engine_env(plugins)
    r = subprocess.run([sys.executable, "-m", "domino_kernels.integrations.vllm_offline", str(spec_path),
                        str(out_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"vLLM engine {name} failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    return json.loads(out_path.read_text())


def _spec(draft: str | None, runs: list, **spec_extra) -> dict:
    spec = {"target": TARGET, "dtype": "float32", "enforce_eager": True, "runs": runs}
    if draft is not None:
        spec["speculative_config"] = {"method": "dflash", "model": os.path.join(ASSETS, draft),
                                      "num_speculative_tokens": K, **spec_extra}
    return spec


@pytest.fixture(scope="module")
def prompts():
    from bench.bench_models import heldout_prompts

    return heldout_prompts(os.path.join(TARGET, "tokenizer.json"), N_PROMPTS, max(RAGGED_LENS))


@pytest.fixture(scope="module")
def ragged(prompts):
    return [prompts[i % len(prompts)][:n] for i, n in enumerate(RAGGED_LENS)]


@pytest.fixture(scope="module")
def ours(prompts, ragged):
    """Our loop on the same prompts: target-only tokens, and tokens + τ per prompt per drafter."""
    from domino_kernels.generate import generate
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    target = load_qwen3(TARGET, dtype=torch.float32)
    out = {"target": [generate(target, [p], max_new_tokens=MAX_TOKENS, ignore_eos=True).tokens[0]
                      for p in prompts],
           "target_ragged": [generate(target, [p], max_new_tokens=MAX_TOKENS, ignore_eos=True).tokens[0]
                             for p in ragged]}
    for name in ("draft-domino", "draft-dflash"):
        draft = load_draft(os.path.join(ASSETS, name), target)
        # vLLM drafts K tokens every step: our loop's fixed policy does the same (the adaptive one
        # may take plain steps, which changes τ, not the output)
        runs = [generate(target, [p], draft=draft, max_new_tokens=MAX_TOKENS, ignore_eos=True, num_proposals=K,
                         spec_policy="fixed") for p in prompts]
        out[name] = {"tokens": [r.tokens[0] for r in runs], "tau": [r.stats["tau"] for r in runs]}
        batch = generate(target, ragged, draft=draft, max_new_tokens=MAX_TOKENS, ignore_eos=True, num_proposals=K,
                         spec_policy="fixed")
        out[name + "/ragged"] = {"tokens": batch.tokens, "tau": batch.stats["tau"]}
    return out


@pytest.fixture(scope="module")
def domino_engine(tmp_path_factory, prompts, ragged):
    return _run_engine(tmp_path_factory, "domino", _spec("draft-domino", [
        {"prompts": prompts, "max_tokens": MAX_TOKENS, "batch": "each"},
        {"prompts": ragged, "max_tokens": MAX_TOKENS, "batch": "all"}]))


@needs_vllm
def test_domino_greedy_equals_target_only_and_tau_equals_our_loop(domino_engine, ours):
    assert domino_engine["domino_hooks"]
    run = domino_engine["runs"][0]
    assert run["tokens"] == ours["target"]
    assert run["tokens"] == ours["draft-domino"]["tokens"]
    assert run["tau"] == pytest.approx(ours["draft-domino"]["tau"], abs=1e-9)
    assert min(run["tau"]) > 1.5   # the head is running: DFlash-only drafting gets far less here


@needs_vllm
def test_domino_batch_of_4_ragged_prompts(domino_engine, ours):
    run = domino_engine["runs"][1]
    assert [len(t) for t in run["tokens"]] == [MAX_TOKENS] * len(RAGGED_LENS)
    assert run["tokens"] == ours["target_ragged"]
    assert run["tau"][0] == pytest.approx(ours["draft-domino/ragged"]["tau"], abs=1e-9)


@needs_vllm
def test_dflash_tau_equals_our_loop_and_plugin_is_inert(tmp_path_factory, prompts, ours):
    runs = [{"prompts": prompts, "max_tokens": MAX_TOKENS, "batch": "each"}]
    with_plugin = _run_engine(tmp_path_factory, "dflash", _spec("draft-dflash", runs))
    without = _run_engine(tmp_path_factory, "dflash-noplugin", _spec("draft-dflash", runs), plugins=False)
    assert with_plugin["domino_hooks"] and not without["domino_hooks"]
    a, b = with_plugin["runs"][0], without["runs"][0]
    assert a["tokens"] == b["tokens"] == ours["target"]
    assert a["tau"] == b["tau"]
    assert a["tau"] == pytest.approx(ours["draft-dflash"]["tau"], abs=1e-9)


@needs_vllm
def test_unsupported_vllm_version_fails_clearly():
    """On a vLLM version outside SUPPORTED_VLLM_VERSIONS (simulated: the version string is changed
    before the engine loads the plugin) a Domino drafter fails with the plugin's message."""
    script = (
        "import vllm\n"
        "vllm.__version__ = '0.31.9'\n"
        "from vllm import LLM\n"
        f"LLM(model={TARGET!r}, skip_tokenizer_init=True, dtype='float32', max_model_len=256, enforce_eager=True,\n"
        f"    speculative_config={{'method': 'dflash', 'model': {os.path.join(ASSETS, 'draft-domino')!r},\n"
        f"                        'num_speculative_tokens': {K}}})\n")
    r = subprocess.run([sys.executable, "-c", script], env=_engine_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode != 0
    assert plugin.unsupported_message("0.31.9") in r.stdout + r.stderr


@needs_vllm
def test_domino_sampled_drafting_with_draft_probs(tmp_path_factory, prompts):
    """T = 1 with draft_sample_method="probabilistic": the head samples its proposals and hands
    vLLM's rejection sampler their distributions. Losslessness of that rejection step is vLLM's
    (and our rollout's q_rows are tested against the reference in test_rollout.py); here: the
    path runs end to end, emits valid tokens and accepts drafts."""
    out = _run_engine(tmp_path_factory, "domino-sampled", _spec(
        "draft-domino", [{"prompts": prompts, "max_tokens": MAX_TOKENS, "batch": "all", "temperature": 1.0,
                          "seed": 1}], draft_sample_method="probabilistic"))
    run = out["runs"][0]
    assert [len(t) for t in run["tokens"]] == [MAX_TOKENS] * len(prompts)
    assert all(0 <= t < 4096 for ts in run["tokens"] for t in ts)
    assert run["tau"][0] > 1.0
