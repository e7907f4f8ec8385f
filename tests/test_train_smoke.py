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


def test_draft_meta_records_the_distillation_recipe(run_dir):
    for kind in ("domino", "dflash"):
        meta = json.load(open(os.path.join(run_dir, f"draft-{kind}", "train_meta.json")))
        assert "spec" not in meta and meta["config"] == json.load(
            open(os.path.join(run_dir, f"draft-{kind}", "config.json")))
        assert meta["recipe"]["kl_weight"] == 0.5 and meta["data"]["sampled_frac"] == 0.5
        assert meta["data"]["train"]["sampled_sequences"] == 4  # half of --distill-prompts 8
        dist = meta["heldout"]["distribution"]
        n = 8 if kind == "domino" else 7  # proposals per block
        assert len(dist["kl_per_proposal"]) == len(dist["accept_per_proposal"]) == n
        assert dist["kl"] >= 0 and 0 < dist["accept"] <= 1
        assert all("kl_base" in c for c in meta["curve"])


# -- the distillation loss against a direct computation on a tiny batch ------------------------

@pytest.fixture(scope="module")
def tiny(run_dir):
    from domino_kernels.train import distill
    from domino_kernels.train.target import load_target
    from domino_kernels.train.tokenizer import EOS_ID, MASK_ID, load_tokenizer

    tok = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
    target = load_target(os.path.join(run_dir, "target")).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 3 training steps leave the logits nearly position-independent:
        for p in target.parameters():  # perturb, so that a misaligned position is detectable
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    stream = data.encode_corpus(tok, data.corpus_files("train", limit=4), EOS_ID)
    d = distill.build_distill_data(target, stream, [0, 1], n_prompts=4, prompt_len=10, new_tokens=14,
                                   seed=7, eos_id=EOS_ID, batch=4, log=lambda _m: None, sampled_frac=0.5)
    with torch.no_grad():
        logits = target(input_ids=d.tokens).logits.float()  # the target's own fp32 logits
    models = {}
    for kind in ("domino", "dflash"):
        cfg = distill.make_draft_config(target.config, MASK_ID, domino=kind == "domino", layers=1,
                                        layer_ids=[0, 1], block=6, gru=16, emb=8)
        m = distill.model_factory(target, cfg, 0)()
        if kind == "domino":  # make the correction matter
            torch.nn.init.normal_(m.embed_proj[2].weight, std=0.5)
        models[kind] = m
    return d, logits, models


def test_sampled_rows_are_sampled_and_greedy_rows_greedy(tiny):
    d, logits, _ = tiny
    assert d.sampled.tolist() == [False, True, False, True]
    p = d.prompt_len
    greedy_pick = logits[:, p - 1:-1].argmax(-1) == d.tokens[:, p:]
    assert greedy_pick[~d.sampled].all()
    assert not greedy_pick[d.sampled].all()  # T=1 draws from a near-flat tiny target


@pytest.mark.parametrize("shift", [True, False])
def test_target_logits_align_with_the_slot_labels(tiny, shift):
    from domino_kernels.train import distill

    d, logits, models = tiny
    rows, anchors = torch.tensor([0, 1, 3]), torch.tensor([[9, 12], [10, 9], [11, 15]])
    got = distill.target_logits(d, rows, anchors, 6, shift, models["domino"].lm_head)
    _, valid = distill.block_labels(d, rows, anchors, 6, shift)
    for bi, r in enumerate(rows.tolist()):
        for ai, a in enumerate(anchors[bi].tolist()):
            for j in range(6):
                if valid[bi, ai, j]:
                    want = logits[r, a + j - (0 if shift else 1)]  # predicts x[a+j+1] / x[a+j]
                    torch.testing.assert_close(got[bi, ai, j], want, atol=0.05, rtol=0.02)
                    # the neighbouring position is measurably different (the check can fail)
                    assert (got[bi, ai, j] - logits[r, a + j - (1 if shift else 0)]).abs().max() > 0.1


def test_kl_is_zero_when_q_equals_p_and_slot_loss_mixes_kl_and_ce():
    from domino_kernels.train import distill

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 11, generator=g)
    labels = torch.randint(0, 11, (2, 3), generator=g)
    torch.testing.assert_close(distill.kl_to_target(q, distill.TargetDist(q)), torch.zeros(2, 3),
                               atol=1e-6, rtol=0)
    pl = torch.randn(2, 3, 11, generator=g)
    log_p = torch.log_softmax(pl, -1)
    ce = torch.nn.functional.cross_entropy(q.flatten(0, 1), labels.flatten(), reduction="none").view(2, 3)
    kl = (log_p.exp() * (log_p - torch.log_softmax(q, -1))).sum(-1)
    loss, kl_out = distill.slot_loss(q, labels, distill.TargetDist(pl), 0.3)
    torch.testing.assert_close(kl_out, kl)
    torch.testing.assert_close(loss, 0.3 * kl + 0.7 * ce)
    with pytest.raises(ValueError, match="kl-weight"):
        distill.DraftRecipe(kl_weight=1.5)
    with pytest.raises(ValueError, match="distill-sampled-frac"):
        distill.build_distill_data(None, torch.arange(100), [0], n_prompts=2, prompt_len=4, new_tokens=2,
                                   seed=0, eos_id=0, sampled_frac=-0.1)


@pytest.mark.parametrize("kind", ["domino", "dflash"])
def test_draft_loss_equals_a_direct_computation(tiny, kind):
    """The curriculum loss with the KL term, recomputed slot by slot from the target's own logits."""
    import torch.nn.functional as F

    from domino_kernels.train import distill

    d, logits, models = tiny
    m = models[kind]
    shift = m.cfg.shift_label
    rows, anchors = torch.tensor([0, 1, 3]), torch.tensor([[9, 12], [10, 9], [11, 15]])
    r, lam = distill.DraftRecipe(kl_weight=0.3, gamma=3.0), 0.4
    with torch.no_grad():
        loss, stats = distill.draft_loss(m, d, rows, anchors, lam, r)
        base, final = distill.draft_forward(m, d, rows, anchors)
    num = den = 0.0
    for bi, row in enumerate(rows.tolist()):
        for ai, a in enumerate(anchors[bi].tolist()):
            for j in range(6):
                pos = a + j + (1 if shift else 0)  # the label's position
                if pos >= int(d.valid_len[row]) or (not shift and j == 0):
                    continue
                w = torch.exp(-torch.tensor(float(max(j - (0 if shift else 1), 0))) / 3.0)
                log_p = F.log_softmax(logits[row, pos - 1], -1)
                label = d.tokens[row, pos]

                def ell(q):
                    lq = F.log_softmax(q, -1)
                    return 0.3 * (log_p.exp() * (log_p - lq)).sum() + 0.7 * -lq[label]
                if final is None:
                    per = ell(base[bi, ai, j])
                else:
                    per = (1 - lam) * ell(final[bi, ai, j]) + lam * ell(base[bi, ai, j])
                num, den = num + w * per, den + w
    torch.testing.assert_close(loss, num / den, atol=2e-4, rtol=2e-4)  # bf16 hidden: ~1e-5 here
    assert stats["kl_base"] > 0


def test_distribution_match_is_perfect_when_q_is_p(tiny, monkeypatch):
    from domino_kernels.train import distill

    d, _, models = tiny
    for kind, m in models.items():
        honest = distill.distribution_match(m, d)
        assert honest["accept"] < 0.999 and honest["kl"] > 1e-3
        shift = m.cfg.shift_label

        def as_target(model, data, rows, anchors, shift=shift):  # q := p at every slot
            q = distill.target_logits(data, rows, anchors, model.cfg.block_size, shift, model.lm_head)
            return q, (None if not model.cfg.has_head else q)
        monkeypatch.setattr(distill, "draft_forward", as_target)
        perfect = distill.distribution_match(m, d)
        monkeypatch.undo()
        assert perfect["accept"] == pytest.approx(1.0, abs=1e-5) and perfect["kl"] == pytest.approx(0, abs=1e-5)
        assert perfect["slots"] == honest["slots"] and sum(perfect["slots"]) > 0
