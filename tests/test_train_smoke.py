"""Smoke test of the training pipeline: tokenizer, target and both drafters for a few
steps on a slice of the corpus through the CLI, then the saved files in the public formats."""
import json
import os

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from domino_kernels.train import data  # noqa: E402
from domino_kernels.train.__main__ import main  # noqa: E402

TINY = ["--max-files", "12", "--vocab-size", "320", "--hidden", "64", "--intermediate", "128",
        "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--seq-len", "32",
        "--batch-size", "4", "--target-steps", "3", "--draft-steps", "2", "--target-layer-ids", "0,1",
        "--block-size", "8", "--gru-hidden", "32", "--emb-dim", "16", "--draft-batch", "4",
        "--anchors", "2", "--distill-prompts", "8", "--distill-prompt-len", "12",
        "--distill-new-tokens", "20", "--threads", "1", "--log-every", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    assert main(["all", "--out", out, "--seed", "3"] + TINY) == 0
    return out


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def test_split_is_disjoint_and_stable():
    tr, ho = data.corpus_files("train"), data.corpus_files("heldout")
    assert tr and ho and not set(tr) & set(ho)
    assert data.corpus_files("heldout") == ho
    with pytest.raises(ValueError, match="split"):
        data.corpus_files("validation")


def test_target_is_a_hugging_face_qwen3(run_dir):
    from transformers import Qwen3ForCausalLM

    path = os.path.join(run_dir, "target")
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["model_type"] == "qwen3" and cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == 320
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    model = Qwen3ForCausalLM.from_pretrained(path)
    assert model(input_ids=torch.tensor([[0, 5, 6]])).logits.shape == (1, 3, 320)
    meta = json.load(open(os.path.join(path, "train_meta.json")))
    assert meta["steps"] == 3 and all(torch.isfinite(torch.tensor(c["loss"])) for c in meta["curve"])


def test_domino_draft_public_format(run_dir):
    path = os.path.join(run_dir, "draft-domino")
    cfg = json.load(open(os.path.join(path, "config.json")))
    d = cfg["dflash_config"]
    assert d == {"target_layer_ids": [0, 1], "mask_token_id": 1, "shift_label": True,
                 "projector_type": "domino", "pure_draft_prefix_len": 1, "emb_dim": 16,
                 "gru_hidden_dim": 32}
    assert cfg["block_size"] == 8 and cfg["num_target_layers"] == 2 and cfg["num_hidden_layers"] == 1
    t = _tensors(path)
    h, g, e, v = 64, 32, 16, 320
    assert t["fc.weight"].shape == (h, 2 * h) and t["hidden_norm.weight"].shape == (h,)
    assert t["prefix_gru.weight_ih_l0"].shape == (3 * g, h)
    assert t["prefix_gru.weight_hh_l0"].shape == (3 * g, g)
    assert t["embed_proj.0.weight"].shape == (e, h + g) and t["embed_proj.2.weight"].shape == (v, e)
    assert t["layers.0.self_attn.k_proj.weight"].shape == (32, h)
    assert all(x.dtype == torch.bfloat16 for x in t.values())
    # The target's embedding / lm_head are borrowed, never stored; no biases anywhere.
    assert not any("embed_tokens" in k or "lm_head" in k or k.endswith("bias") for k in t)


def test_dflash_draft_has_no_head_and_dflash_labels(run_dir):
    path = os.path.join(run_dir, "draft-dflash")
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert cfg["dflash_config"]["shift_label"] is False and "projector_type" not in cfg["dflash_config"]
    t = _tensors(path)
    assert not any(k.startswith(("prefix_gru", "embed_proj")) for k in t)
    assert set(t) == set(_tensors(os.path.join(run_dir, "draft-domino"))) - {
        "prefix_gru.weight_ih_l0", "prefix_gru.weight_hh_l0", "embed_proj.0.weight", "embed_proj.2.weight"}


def test_training_is_deterministic(run_dir, tmp_path):
    out = str(tmp_path / "again")
    assert main(["all", "--out", out, "--seed", "3", "--variants", "domino"] + TINY) == 0
    for sub in ("target", "draft-domino"):
        a, b = _tensors(os.path.join(run_dir, sub)), _tensors(os.path.join(out, sub))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), sub


def test_draft_configs_read_back_through_the_decode_schema(run_dir):
    from domino_kernels.model.config import DraftConfig

    for sub in ("draft-domino", "draft-dflash"):
        path = os.path.join(run_dir, sub)
        written = json.load(open(os.path.join(path, "config.json")))
        assert DraftConfig.from_dir(path).to_dict() == written, sub
