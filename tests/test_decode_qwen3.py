"""The Qwen3 target against transformers' Qwen3ForCausalLM on tiny random checkpoints
(save_pretrained, fp32): logits of a packed ragged prefill, of incremental decoding over the paged
KV cache, of tree verification, and the captured hidden states (spec §2.1 +1 offset)."""
import pytest
import torch

from tests.decode_fixtures import make_target, single_thread

_single_thread = single_thread()
from domino_kernels import ops as kernels
from domino_kernels.model.qwen3 import load_qwen3

CONFIGS = [  # (heads, kv_heads, head_dim, tie): GQA ratios 1, 2, 4, 3; odd head counts
    dict(heads=4, kv_heads=4, head_dim=8, tie=False),
    dict(heads=4, kv_heads=2, head_dim=8, tie=True),
    dict(heads=8, kv_heads=2, head_dim=4, tie=False),
    dict(heads=3, kv_heads=1, head_dim=10, tie=True),
    dict(heads=5, kv_heads=5, head_dim=6, tie=False),
]


def _packed(prompts):
    lens = torch.tensor([len(p) for p in prompts])
    cu = torch.zeros(len(prompts) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    return (torch.cat([torch.tensor(p) for p in prompts]), torch.cat([torch.arange(len(p)) for p in prompts]),
            cu, lens)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"h{c['heads']}kv{c['kv_heads']}d{c['head_dim']}"
                         + ("tied" if c["tie"] else ""))
def test_prefill_logits_and_hidden_match_transformers(tmp_path, cfg):
    hf = make_target(tmp_path, layers=4, seed=len(tmp_path.name), **cfg)  # HF normalises its last hidden state: capture inner layers
    model = load_qwen3(str(tmp_path))
    model.capture_layers = [0, 2]
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (7, 1, 12)]
    tokens, pos, cu, lens = _packed(prompts)
    cache = model.new_cache(3, 32, page_size=4)
    logits, feats = model.forward(tokens, pos, cache, torch.arange(3), cu)
    for b, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf(torch.tensor([p]), output_hidden_states=True)
        rows = slice(int(cu[b]), int(cu[b + 1]))
        assert (logits[rows] - ref.logits[0]).abs().max() <= 1e-4
        h = hf.config.hidden_size
        assert (feats[rows, :h] - ref.hidden_states[1][0]).abs().max() <= 1e-5  # output of layer 0
        assert (feats[rows, h:] - ref.hidden_states[3][0]).abs().max() <= 1e-5  # output of layer 2


def test_incremental_decode_over_paged_cache_matches_full_forward(tmp_path):
    hf = make_target(tmp_path, layers=2, heads=4, kv_heads=2)
    model = load_qwen3(str(tmp_path))
    seq = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(seq).logits
    cache = model.new_cache(2, 24, page_size=3)
    cache.block_table = cache.block_table.flip(1).contiguous()  # pages out of order: really paged
    rows = torch.arange(2)
    tokens, pos, cu, lens = _packed([seq[0, :5].tolist(), seq[1, :9].tolist()])
    model.forward(tokens, pos, cache, rows, cu)
    cache.commit(rows, lens)
    for step in range(8):  # one token per request per step, different lengths
        nxt = torch.stack([seq[0, 5 + step], seq[1, 9 + step]])
        logits, _ = model.forward(nxt, cache.lens.long(), cache, rows, torch.tensor([0, 1, 2], dtype=torch.int32))
        cache.commit(rows, torch.ones(2, dtype=torch.int32))
        assert (logits[0] - ref[0, 5 + step]).abs().max() <= 1e-4
        assert (logits[1] - ref[1, 9 + step]).abs().max() <= 1e-4


def test_tree_verification_logits_equal_each_branch_run_alone(tmp_path):
    hf = make_target(tmp_path, layers=2)
    model = load_qwen3(str(tmp_path))
    prefix = [5, 9, 33, 2]
    # tree: 0 -> {1, 2}; 1 -> {3}; 2 -> {4, 5}
    parents = torch.tensor([[-1, 0, 0, 1, 2, 2]])
    toks = torch.tensor([[40, 41, 42, 43, 44, 45]])
    cache = model.new_cache(1, 32, page_size=4)
    rows = torch.arange(1)
    tokens, pos, cu, lens = _packed([prefix])
    model.forward(tokens, pos, cache, rows, cu)
    cache.commit(rows, lens)
    mask, depth, positions = kernels.tree_info(parents, prefix_lens=lens)
    logits, _ = model.forward(toks[0], positions[0], cache, rows, torch.tensor([0, 6], dtype=torch.int32),
                              mode="tree", tree_mask=mask[0])
    for leaf_path in ([0, 1, 3], [0, 2, 4], [0, 2, 5]):
        seq = torch.tensor([prefix + toks[0, leaf_path].tolist()])
        with torch.no_grad():
            ref = hf(seq).logits[0, len(prefix):]
        assert (logits[leaf_path] - ref).abs().max() <= 1e-4


def test_transformers4_config_form_and_sharded_checkpoint(tmp_path):
    hf = make_target(tmp_path / "a", layers=2, form=4)
    hf.save_pretrained(tmp_path / "b", max_shard_size="20KB")  # sharded + index.json
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        ref = hf(ids).logits[0]
    for d in ("a", "b"):
        model = load_qwen3(str(tmp_path / d))
        assert model.cfg.rope_theta == 10000.0
        tokens, pos, cu, _ = _packed([ids[0].tolist()])
        logits, _ = model.forward(tokens, pos, model.new_cache(1, 16), torch.arange(1), cu)
        assert (logits - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load_and_run_close_to_fp32(tmp_path, dtype):
    hf = make_target(tmp_path, layers=2, dtype=dtype)
    model = load_qwen3(str(tmp_path))
    assert model.dtype == dtype
    ids = [3, 1, 4, 1, 5]
    tokens, pos, cu, _ = _packed([ids])
    logits, _ = model.forward(tokens, pos, model.new_cache(1, 16), torch.arange(1), cu)
    with torch.no_grad():
        ref = hf.to(dtype)(torch.tensor([ids])).logits[0].float()
    assert (logits - ref).abs().max() <= 2e-2


def test_paged_cache_move_tokens_compacts_an_accepted_tree_path():
    from domino_kernels.model.qwen3 import PagedKVCache

    cache = PagedKVCache(num_layers=2, batch=2, capacity=12, num_kv_heads=1, head_dim=2,
                         dtype=torch.float32, device="cpu", page_size=4)
    cache.block_table = cache.block_table.flip(0).contiguous()  # request 0 owns the last pages
    for b in range(2):
        for pos in range(12):
            page = int(cache.block_table[b, pos // 4])
            cache.k[:, page, pos % 4] = 100 * b + pos
            cache.v[:, page, pos % 4] = -(100 * b + pos)
    # request 1: prefix 3, accepted tree nodes [0, 2, 5] -> slots 3+[0, 2, 5] move to 3+[0, 1, 2]
    cache.move_tokens(torch.tensor([1, 1]), torch.tensor([5, 8]), torch.tensor([4, 5]))
    got = [float(cache.k[1, int(cache.block_table[1, p // 4]), p % 4, 0, 0]) for p in range(3, 6)]
    assert got == [103.0, 105.0, 108.0]
    assert float(cache.v[0, int(cache.block_table[1, 1]), 0, 0, 0]) == -105.0  # position 4
    assert float(cache.k[0, int(cache.block_table[0, 1]), 0, 0, 0]) == 4.0  # request 0 untouched
