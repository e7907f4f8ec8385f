"""Draft context features mean Hugging Face ``hidden_states[id + 1]`` (the training reference's
definition, SpecForge's ``extract_context_feature``) in the decode loop and in the training code:
for the target's last layer that is the final norm's output, not the layer's residual stream.
Checked against transformers' ``output_hidden_states`` on a tiny random Qwen3, with layer ids that
include the last layer and ids that don't; the ``residual`` switch (vLLM 0.32's meaning) changes
only the last layer's feature."""
import json

import pytest
import torch

from domino_kernels.generate import generate
from domino_kernels.model.config import CheckpointError, DraftConfig, Qwen3Config
from domino_kernels.model.dflash import load_draft
from domino_kernels.model.qwen3 import load_qwen3
from domino_kernels.train.distill import capture_features
from tests.decode_fixtures import make_draft, make_target, single_thread

_single_thread = single_thread()

LAYERS = 4
IDS = [(0, 1, 2), (1,), (0, 2, 3), (3,), (1, 3)]  # the last layer is 3


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("t")
    # init_range 0.1 gives the residual stream a scale far from 1, so that the final norm visibly
    # changes it (with the default 0.02 a normed and a raw state would differ too, but less)
    hf = make_target(d, layers=LAYERS, init_range=0.1, seed=4)
    return d, hf


def _hf_states(hf, ids):
    """HF hidden_states and the raw residual-stream output of every decoder layer."""
    raw = {}
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out, i=i: raw.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, layer in enumerate(hf.model.layers)]
    try:
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    return out, raw


def _decode_features(model, prompts, ids, last_layer_feature):
    model.capture_layers = list(ids)
    model.last_layer_feature = last_layer_feature
    lens = [len(p) for p in prompts]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    tokens = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(n) for n in lens])
    cache = model.new_cache(len(prompts), 32, page_size=4)
    return model.forward(tokens, positions, cache, torch.arange(len(prompts)), cu), cu


def test_the_reference_definition_differs_from_the_raw_last_layer(target_dir):
    """The premise: HF's hidden_states[L] is the final norm's output, not layer L-1's."""
    _, hf = target_dir
    out, raw = _hf_states(hf, torch.tensor([[3, 5, 7, 11]]))
    assert len(out.hidden_states) == LAYERS + 1
    for i in range(LAYERS - 1):
        assert torch.equal(out.hidden_states[i + 1], raw[i])
    assert (out.hidden_states[LAYERS] - raw[LAYERS - 1]).abs().max() > 0.1
    assert torch.allclose(out.hidden_states[LAYERS], hf.model.norm(raw[LAYERS - 1]))


@pytest.mark.parametrize("ids", IDS, ids=lambda t: "ids" + "-".join(map(str, t)))
@pytest.mark.parametrize("last", ["final_norm", "residual"])
def test_decode_capture_matches_transformers(target_dir, ids, last):
    d, hf = target_dir
    model = load_qwen3(str(d))
    g = torch.Generator().manual_seed(len(ids))
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (6, 1, 9)]
    (logits, feats), cu = _decode_features(model, prompts, ids, last)
    h = hf.config.hidden_size
    assert feats.shape == (sum(map(len, prompts)), len(ids) * h)
    for b, p in enumerate(prompts):
        ref, raw = _hf_states(hf, torch.tensor([p]))
        rows = slice(int(cu[b]), int(cu[b + 1]))
        assert (logits[rows] - ref.logits[0]).abs().max() <= 1e-4  # the switch never moves logits
        for k, i in enumerate(ids):
            want = raw[i][0] if (last == "residual" and i == LAYERS - 1) else ref.hidden_states[i + 1][0]
            assert (feats[rows, k * h:(k + 1) * h] - want).abs().max() <= 1e-5, (i, last)


def test_decode_logits_rows_with_a_captured_last_layer(target_dir):
    """Logits of selected rows come from the same final norm the last-layer feature reuses."""
    d, hf = target_dir
    model = load_qwen3(str(d))
    model.capture_layers = [1, 3]
    p = [4, 8, 15, 16, 23, 42]
    cu = torch.tensor([0, len(p)], dtype=torch.int32)
    logits, feats = model.forward(torch.tensor(p), torch.arange(len(p)), model.new_cache(1, 16), torch.arange(1),
                                  cu, logits_rows=torch.tensor([2, 5]))
    ref, _ = _hf_states(hf, torch.tensor([p]))
    assert (logits - ref.logits[0, [2, 5]]).abs().max() <= 1e-4
    assert (feats[:, 32:] - ref.hidden_states[LAYERS][0]).abs().max() <= 1e-5


@pytest.mark.parametrize("ids", IDS, ids=lambda t: "ids" + "-".join(map(str, t)))
def test_training_capture_matches_transformers(target_dir, ids):
    _, hf = target_dir
    seq = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(7))
    ref, raw = _hf_states(hf, seq)
    got = capture_features(hf, seq, ids)
    assert torch.equal(got, torch.cat([ref.hidden_states[i + 1] for i in ids], dim=-1))
    got = capture_features(hf, seq, ids, "residual")
    assert torch.equal(got, torch.cat([raw[i] if i == LAYERS - 1 else ref.hidden_states[i + 1] for i in ids], -1))


def test_training_and_decode_capture_agree(target_dir):
    d, hf = target_dir
    model = load_qwen3(str(d))
    p = torch.randint(0, 97, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    for last in ("final_norm", "residual"):
        (_, feats), _ = _decode_features(model, [p], (0, 3), last)
        assert (feats - capture_features(hf, torch.tensor([p]), (0, 3), last)[0]).abs().max() <= 1e-5


def test_bad_last_layer_feature_is_refused(target_dir, tmp_path):
    d, hf = target_dir
    with pytest.raises(ValueError, match="last_layer_feature"):
        capture_features(hf, torch.tensor([[1, 2]]), (3,), "post_norm")
    make_draft(tmp_path / "d", 32, target_layer_ids=(1, 3))
    target = load_qwen3(str(d))
    with pytest.raises(ValueError, match="argument 'last_layer_feature'"):
        load_draft(str(tmp_path / "d"), target, last_layer_feature="raw")
    cfg = json.load(open(tmp_path / "d" / "config.json"))
    cfg["dflash_config"]["last_layer_feature"] = "normed"
    with pytest.raises(CheckpointError, match=r"dflash_config.last_layer_feature 'normed'"):
        DraftConfig.from_dict(cfg, "x/config.json")


def test_config_key_loader_option_and_writer_round_trip(target_dir, tmp_path):
    d, _ = target_dir
    target = load_qwen3(str(d))
    make_draft(tmp_path / "d", 32, target_layer_ids=(1, 3))
    assert load_draft(str(tmp_path / "d"), target).cfg.last_layer_feature == "final_norm"  # the default
    assert load_draft(str(tmp_path / "d"), target, last_layer_feature="residual").cfg.last_layer_feature == "residual"
    layers = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    for last in ("final_norm", "residual"):
        cfg = DraftConfig(layers=layers, block_size=16, target_layer_ids=[1, 3], mask_token_id=96,
                          projector_type="domino", pure_draft_prefix_len=1, shift_label=True, emb_dim=8,
                          gru_hidden_dim=16, num_target_layers=4, last_layer_feature=last)
        written = cfg.to_dict()
        assert ("last_layer_feature" in written["dflash_config"]) == (last == "residual")  # reference: no key
        assert DraftConfig.from_dict(written).last_layer_feature == last


@pytest.mark.parametrize("last", ["final_norm", "residual"])
def test_generate_feeds_the_drafts_meaning_and_stays_lossless(tmp_path, last):
    hf = make_target(tmp_path / "t", layers=LAYERS, init_range=0.1, seed=3)
    make_draft(tmp_path / "d", 32, target_layer_ids=(1, 3))
    target = load_qwen3(str(tmp_path / "t"))
    draft = load_draft(str(tmp_path / "d"), target, last_layer_feature=last)
    seen = []
    append_context = draft.append_context

    def spy(feats, *args, **kwargs):
        seen.append(feats.clone())
        return append_context(feats, *args, **kwargs)

    draft.append_context = spy
    prompt = torch.randint(0, 97, (7,), generator=torch.Generator().manual_seed(5)).tolist()
    spec = generate(target, [prompt], draft=draft, max_new_tokens=12)
    plain = generate(target, [prompt], max_new_tokens=12)
    assert spec.tokens == plain.tokens
    ref, raw = _hf_states(hf, torch.tensor([prompt]))
    want = raw[3][0] if last == "residual" else ref.hidden_states[LAYERS][0]
    assert (seen[0][:, 32:] - want).abs().max() <= 1e-5  # the prefill's features of layer 3
