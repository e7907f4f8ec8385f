"""The shipped default pair (domino_kernels/assets/default): present, small, consistent, and a
speculative decode with it is lossless and accepts drafts."""
import json
import os

import pytest
import torch

from domino_kernels.assets import DEFAULT_DIR, default_draft_dir, default_target_dir


def _cfg(path):
    return json.load(open(os.path.join(path, "config.json")))


def test_files_and_size_budget():
    total = 0
    for sub in ("target", "draft-domino", "draft-dflash"):
        for name in ("config.json", "model.safetensors"):
            path = os.path.join(DEFAULT_DIR, sub, name)
            assert os.path.exists(path), path
            total += os.path.getsize(path)
    assert os.path.exists(os.path.join(default_target_dir(), "tokenizer.json"))
    assert total <= 20 * 2**20, f"shipped weights are {total / 2**20:.1f} MiB"
    with pytest.raises(ValueError, match="kind"):
        default_draft_dir("eagle")


def test_pair_is_consistent():
    t = _cfg(default_target_dir())
    for kind in ("domino", "dflash"):
        d = _cfg(default_draft_dir(kind))
        dfc = d["dflash_config"]
        assert d["vocab_size"] == t["vocab_size"] and d["hidden_size"] == t["hidden_size"]
        assert d["num_target_layers"] == t["num_hidden_layers"]
        assert all(0 <= i < t["num_hidden_layers"] for i in dfc["target_layer_ids"])
        # the last layer's feature means different things in SpecForge (final norm) and vLLM 0.32
        # (raw residual): the shipped pair avoids it, so it means the same in every implementation
        assert t["num_hidden_layers"] - 1 not in dfc["target_layer_ids"], kind
        assert dfc["shift_label"] is (kind == "domino")
        assert dfc["mask_token_id"] == 1


def test_tokenizer_round_trip():
    tok = pytest.importorskip("tokenizers").Tokenizer.from_file(os.path.join(default_target_dir(), "tokenizer.json"))
    text = "def f(x):\n    return x + 1\n"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|mask|>") == 1


def test_speculative_decode_with_the_shipped_pair():
    from domino_kernels.generate import generate
    from domino_kernels.model.dflash import load_draft
    from domino_kernels.model.qwen3 import load_qwen3

    target = load_qwen3(default_target_dir(), dtype=torch.float32)
    prompt = [0, 37, 37, 37, 1000, 200, 300, 12]
    ref = generate(target, [prompt], max_new_tokens=48, ignore_eos=True)
    for kind in ("domino", "dflash"):
        draft = load_draft(default_draft_dir(kind), target, dtype=torch.float32)
        res = generate(target, [prompt], draft=draft, max_new_tokens=48, ignore_eos=True, spec_policy="fixed")
        assert res.tokens == ref.tokens
        assert res.stats["tau"] > 1.0, kind
