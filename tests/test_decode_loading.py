"""Checkpoint loading: draft formats (flat, legacy prefixes, causal_v5 alias, DFlash without head,
sharded, dtypes) and clear errors for corrupt or mismatched files."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from domino_kernels.model.config import CheckpointError, DraftConfig, Qwen3Config, build_target_layer_ids
from domino_kernels.model.dflash import load_draft
from domino_kernels.model.qwen3 import load_qwen3
from tests.decode_fixtures import make_draft, make_target, single_thread

_single_thread = single_thread()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = tmp_path_factory.mktemp("target")
    make_target(d, layers=4)
    return load_qwen3(str(d))


def _edit_config(path, **changes):
    p = os.path.join(path, "config.json")
    c = json.load(open(p))
    for k, v in changes.items():
        if k == "dflash_config":
            c["dflash_config"].update(v)
        else:
            c[k] = v
    json.dump(c, open(p, "w"))


@pytest.mark.parametrize("variant", ["flat", "logit_head", "logits_correction", "causal_v5", "sharded"])
def test_domino_draft_formats_load_the_same_weights(tmp_path, target, variant):
    kw = dict(prefix={"logit_head": "logit_head.", "logits_correction": "logits_correction."}.get(variant, ""),
              projector="causal_v5" if variant == "causal_v5" else "domino",
              shards=3 if variant == "sharded" else 1)
    tensors = make_draft(tmp_path, 32, **kw)
    draft = load_draft(str(tmp_path), target)
    assert draft.cfg.projector_type == "domino" and draft.cfg.shift_label
    assert draft.cfg.target_layer_ids == [0, 2] and draft.cfg.mask_token_id == 96
    w2_name = [k for k in tensors if k.endswith("embed_proj.2.weight")][0]
    assert torch.equal(draft.head.w2, tensors[w2_name])
    assert torch.equal(draft.fc, tensors["fc.weight"])
    z = draft.block_forward(torch.tensor([3]), target.embed, draft.new_cache(1, 32), torch.arange(1))
    assert z.shape == (1, 16, 32) and torch.isfinite(z).all()


def test_dflash_draft_without_head(tmp_path, target):
    make_draft(tmp_path, 32, head=False, shift_label=False)
    draft = load_draft(str(tmp_path), target)
    assert draft.head is None and draft.max_proposals() == 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_draft_dtypes_follow_the_target(tmp_path, target, dtype):
    make_draft(tmp_path, 32, dtype=dtype)
    draft = load_draft(str(tmp_path), target)
    assert draft.fc.dtype == target.dtype


@pytest.mark.parametrize("head", [True, False])
def test_draft_config_writes_what_it_reads(tmp_path, head):
    """One schema, both directions: the written config reads back to the same DraftConfig, and
    carries every field of a published-format config.json with the same value."""
    make_draft(tmp_path, 32, head=head, shift_label=head, dtype=torch.bfloat16)
    published = json.load(open(tmp_path / "config.json"))
    cfg = DraftConfig.from_dir(str(tmp_path))
    written = cfg.to_dict()
    assert DraftConfig.from_dict(written) == cfg
    assert {k: written[k] for k in published} == published
    assert json.loads(json.dumps(written)) == written


@pytest.mark.parametrize("eos", [[], [7], [3, 7]])
def test_qwen3_config_writes_what_it_reads(tmp_path, eos):
    make_target(tmp_path, layers=2, eos=eos[0] if len(eos) == 1 else (eos or None))
    cfg = Qwen3Config.from_dir(str(tmp_path))
    assert cfg.eos_token_ids == eos
    assert Qwen3Config.from_dict(cfg.to_dict()) == cfg


def test_missing_target_layer_ids_default_to_dflash_spacing():
    assert build_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]


def test_emb_dim_at_top_level_and_gru_defaulting_to_emb_dim(tmp_path, target):
    make_draft(tmp_path, 32, emb_dim=16, gru=16)
    p = os.path.join(tmp_path, "config.json")
    c = json.load(open(p))
    c["emb_dim"] = c["dflash_config"].pop("emb_dim")
    c["dflash_config"].pop("gru_hidden_dim")
    json.dump(c, open(p, "w"))
    cfg = DraftConfig.from_dir(str(tmp_path))
    assert cfg.emb_dim == 16 and cfg.gru_hidden_dim == 16
    load_draft(str(tmp_path), target)


def _expect(match, fn):
    with pytest.raises(CheckpointError, match=match):
        fn()


def test_mismatched_drafts_get_errors_that_name_the_problem(tmp_path, target):
    make_draft(tmp_path / "h", 40)
    _expect("hidden_size 40 != target hidden_size 32", lambda: load_draft(str(tmp_path / "h"), target))
    make_draft(tmp_path / "v", 32, vocab=50, mask_token_id=3)
    _expect("vocab_size 97 != target vocab_size|vocab_size", lambda: load_draft(str(tmp_path / "v"), target))
    make_draft(tmp_path / "ids", 32, target_layer_ids=(0, 7))
    _expect(r"target_layer_ids \[0, 7\] name layers \[7\]", lambda: load_draft(str(tmp_path / "ids"), target))
    make_draft(tmp_path / "m", 32, mask_token_id=500)
    _expect("mask_token_id 500", lambda: load_draft(str(tmp_path / "m"), target))
    make_draft(tmp_path / "p", 32)
    _edit_config(tmp_path / "p", dflash_config={"projector_type": "mlp"})
    _expect("projector_type 'mlp'", lambda: load_draft(str(tmp_path / "p"), target))


def test_wrong_shapes_and_missing_tensors_are_named(tmp_path, target):
    t = make_draft(tmp_path, 32)
    path = os.path.join(tmp_path, "model.safetensors")
    bad = dict(t)
    bad["embed_proj.2.weight"] = torch.zeros(97, 15)
    save_file(bad, path)
    _expect(r"'embed_proj.2.weight' has shape \[97, 15\], expected \[97, 16\]", lambda: load_draft(str(tmp_path), target))
    bad = dict(t)
    del bad["layers.1.self_attn.k_norm.weight"]
    save_file(bad, path)
    _expect("missing tensor 'layers.1.self_attn.k_norm.weight'", lambda: load_draft(str(tmp_path), target))
    bad = dict(t, **{"layers.2.mlp.up_proj.weight": torch.zeros(64, 32)})
    save_file(bad, path)
    _expect("unexpected tensors", lambda: load_draft(str(tmp_path), target))


def test_corrupt_files_are_refused_with_the_file_named(tmp_path, target):
    make_draft(tmp_path / "trunc", 32)
    p = tmp_path / "trunc" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect("model.safetensors: cannot read safetensors file", lambda: load_draft(str(tmp_path / "trunc"), target))
    make_draft(tmp_path / "shard", 32, shards=2)
    os.remove(tmp_path / "shard" / "model-00002-of-00002.safetensors")
    _expect("shard 'model-00002-of-00002.safetensors' is listed but missing",
            lambda: load_draft(str(tmp_path / "shard"), target))
    os.makedirs(tmp_path / "pickle")
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "pickle" / "pytorch_model.bin")
    (tmp_path / "pickle" / "config.json").write_text((tmp_path / "trunc" / "config.json").read_text())
    _expect("pickled checkpoints are not loaded", lambda: load_draft(str(tmp_path / "pickle"), target))
    (tmp_path / "trunc" / "config.json").write_text("{not json")
    _expect("not valid JSON", lambda: load_draft(str(tmp_path / "trunc"), target))


def test_target_errors(tmp_path):
    make_target(tmp_path / "t", layers=2)
    st = load_file(tmp_path / "t" / "model.safetensors")
    st["model.layers.1.mlp.down_proj.weight"] = torch.zeros(32, 63)
    save_file(st, tmp_path / "t" / "model.safetensors")
    _expect(r"'model.layers.1.mlp.down_proj.weight' has shape \[32, 63\], expected \[32, 64\]",
            lambda: load_qwen3(str(tmp_path / "t")))
    make_target(tmp_path / "u", layers=2, tie=False)
    st = load_file(tmp_path / "u" / "model.safetensors")
    del st["lm_head.weight"]
    save_file(st, tmp_path / "u" / "model.safetensors")
    _expect("missing tensor 'lm_head.weight'", lambda: load_qwen3(str(tmp_path / "u")))
    make_target(tmp_path / "r", layers=2)
    _edit_config(tmp_path / "r", rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0})
    _expect("rope type 'yarn' is not supported", lambda: load_qwen3(str(tmp_path / "r")))
    _expect("nowhere/config.json: file not found", lambda: load_qwen3(str(tmp_path / "nowhere")))
