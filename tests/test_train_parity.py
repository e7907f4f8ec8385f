"""Trained drafters vs the decode layer: the training module and the inference loader agree on the
block hidden states and on the greedy proposals, and speculative greedy decoding with a freshly
trained pair equals target-only decoding. Needs the training dependencies (tokenizers,
transformers)."""
import os

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from domino_kernels.model.config import DraftConfig  # noqa: E402
from domino_kernels.model.dflash import load_draft  # noqa: E402
from domino_kernels.model.qwen3 import load_qwen3  # noqa: E402
from domino_kernels.train.__main__ import main  # noqa: E402
from domino_kernels.train.draft_model import DraftModel  # noqa: E402

TINY = ["--max-files", "10", "--vocab-size", "300", "--hidden", "64", "--intermediate", "128",
        "--layers", "3", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--seq-len", "32",
        "--batch-size", "4", "--target-steps", "4", "--draft-steps", "2", "--target-layer-ids", "0,2",
        "--block-size", "8", "--gru-hidden", "32", "--emb-dim", "16", "--draft-batch", "4",
        "--anchors", "2", "--distill-prompts", "8", "--distill-prompt-len", "12",
        "--distill-new-tokens", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pair"))
    assert main(["all", "--out", out, "--seed", "5"] + TINY) == 0
    return out


def _training_module(path, target, w2=None):
    from safetensors.torch import load_file

    m = DraftModel(DraftConfig.from_dir(path), target.embed.float(), target.lm_head.float())
    sd = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    if w2 is not None:
        sd["embed_proj.2.weight"] = w2
    m.load_state_dict(sd, strict=True)
    return m


@pytest.mark.parametrize("kind", ["domino", "dflash"])
def test_block_and_proposals_match_the_decode_layer(pair, kind):
    target = load_qwen3(os.path.join(pair, "target"), dtype=torch.float32)
    draft = load_draft(os.path.join(pair, f"draft-{kind}"), target, dtype=torch.float32)
    w2 = None
    if kind == "domino":  # a few training steps leave the zero-initialised W2 tiny: make it matter
        w2 = torch.randn(draft.head.w2.shape, generator=torch.Generator().manual_seed(0)) * 20
        draft.head = type(draft.head)(draft.head.w_ih, draft.head.w_hh, draft.head.w1, w2)
    mine = _training_module(os.path.join(pair, f"draft-{kind}"), target, w2)
    target.capture_layers = list(draft.cfg.target_layer_ids)
    g = torch.Generator().manual_seed(1)
    for n in (5, 11):
        ids = torch.randint(2, 300, (n,), generator=g)
        rows, cu = torch.tensor([0]), torch.tensor([0, n], dtype=torch.int32)
        _, feats = target.forward(ids, torch.arange(n), target.new_cache(1, 64), rows, cu)
        cache = draft.new_cache(1, 64 + draft.cfg.block_size)
        draft.append_context(feats, torch.arange(n), cache, rows, cu)
        anchor = torch.randint(2, 300, (1,), generator=g)
        z_dec = draft.block_forward(anchor, target.embed, cache, rows)
        z_mine = mine.backbone(feats[None], torch.tensor([[n]]), anchor[None])[:, 0]
        torch.testing.assert_close(z_mine, z_dec, atol=1e-4, rtol=1e-4)
        k = draft.max_proposals()
        assert torch.equal(mine.propose(z_mine, anchor, k), draft.propose_chain(z_dec, anchor, target, k))


def test_greedy_speculative_equals_target_only(pair):
    from domino_kernels.generate import generate

    target = load_qwen3(os.path.join(pair, "target"), dtype=torch.float32)
    prompts = [[0, 5, 9, 33, 17], [0, 40, 41]]
    ref = generate(target, prompts, max_new_tokens=24, ignore_eos=True).tokens
    for kind in ("domino", "dflash"):
        draft = load_draft(os.path.join(pair, f"draft-{kind}"), target, dtype=torch.float32)
        assert generate(target, prompts, draft=draft, max_new_tokens=24, ignore_eos=True).tokens == ref
