"""tree_attention / append_kv / tree_info: CPU kernels against the dense fp32 reference, mask
equivalences, bad input, opcheck, torch.compile, and CUDA against CPU (skipped without a GPU)."""
import math

import pytest
import torch
import torch.nn.functional as F

import domino_kernels as dk
from domino_kernels.reference import attention as ref
from tests.attention_cases import make_case, random_parents, ragged_tree_mask

MODES = {"causal": ref.CAUSAL, "tree": ref.TREE, "full": ref.FULL}
# Output tolerance against the fp32 reference computed from the same (rounded) inputs: fp32 is
# reduction-order noise; bf16/fp16 are dominated by rounding the output to the input dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def run_both(case, mode, dtype=torch.float32, scale=None):
    out, lse = dk.tree_attention(*case.args(), mode=mode, tree_mask=case.tree_mask, scale=scale,
                                 return_lse=True)
    r_out, r_lse = ref.tree_attention(*case.args(), case.tree_mask, MODES[mode], scale)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == case.q.shape
    torch.testing.assert_close(out.float(), r_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, r_lse, atol=1e-4, rtol=1e-5)
    return out, lse


# Ragged batches: an empty prefix, one-token queries, a request with zero new tokens.
RAGGED = [([37, 0, 5, 80], [5, 3, 1, 0]), ([0], [17]), ([100, 3], [1, 40])]


@pytest.mark.parametrize("mode", ["causal", "tree", "full"])
@pytest.mark.parametrize("page_size", [1, 16, None])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_matches_reference_ragged(mode, page_size, group):
    for idx, (prefix, new) in enumerate(RAGGED):
        case = make_case(prefix, new, hq=2 * group, hkv=2, d=64, page_size=page_size,
                         seed=idx + 10 * group, tree=(mode == "tree"))
        run_both(case, mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128, 40, 256])
def test_dtypes_and_head_dims(dtype, d):
    case = make_case([70, 9], [6, 33], hq=8, hkv=2, d=d, page_size=16, dtype=dtype, seed=d,
                     tree=True)
    run_both(case, "tree", dtype)
    run_both(case, "causal", dtype, scale=0.3)


def test_causal_prefill_long_and_split_kv():
    # One request, one KV head, 3000-key prefix: the planner splits the keys and merges by LSE.
    case = make_case([3000], [4], hq=4, hkv=1, d=64, page_size=16, seed=3)
    run_both(case, "causal")
    # Prefill of 300 tokens with an empty prefix: several row tiles, causal key ranges per tile.
    case = make_case([0], [300], hq=4, hkv=2, d=32, page_size=None, seed=4)
    run_both(case, "causal")


def test_random_trees_many():
    gen = torch.Generator().manual_seed(7)
    for seed in range(6):
        new = [int(torch.randint(1, 70, (1,), generator=gen)) for _ in range(3)]
        prefix = [int(torch.randint(0, 200, (1,), generator=gen)) for _ in range(3)]
        case = make_case(prefix, new, hq=8, hkv=2, d=64, page_size=16, seed=100 + seed, tree=True)
        run_both(case, "tree")


def test_chain_tree_equals_causal():
    case = make_case([50, 0, 7], [9, 40, 1], hq=8, hkv=2, d=64, page_size=16, seed=5)
    case.parents = [torch.arange(-1, n - 1) for n in [9, 40, 1]]
    case.tree_mask = ragged_tree_mask(case.parents)
    tree = dk.tree_attention(*case.args(), mode="tree", tree_mask=case.tree_mask)
    causal = dk.tree_attention(*case.args(), mode="causal")
    torch.testing.assert_close(tree, causal, atol=0, rtol=0)


def test_full_equals_unmasked_sdpa():
    case = make_case([64, 10], [16, 5], hq=8, hkv=2, d=64, page_size=16, seed=6)
    out = dk.tree_attention(*case.args(), mode="full")
    cu = case.q_cu_lens.tolist()
    for b in range(2):
        length = int(case.kv_lens[b]) + cu[b + 1] - cu[b]
        k = ref.gather_kv(case.k_cache, case.block_table, b, length).repeat_interleave(4, 1)
        v = ref.gather_kv(case.v_cache, case.block_table, b, length).repeat_interleave(4, 1)
        q = case.q[cu[b]:cu[b + 1]]
        expect = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                v.transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(out[cu[b]:cu[b + 1]], expect, atol=2e-5, rtol=2e-5)


def test_row_that_sees_nothing_is_zero_with_lse_minus_inf():
    case = make_case([0], [3], hq=2, hkv=1, d=16, page_size=4, seed=8)
    mask = torch.tensor([[1], [0], [3]], dtype=torch.int32)  # token 1 sees nothing
    out, lse = dk.tree_attention(*case.args(), mode="tree", tree_mask=mask, return_lse=True)
    assert torch.all(out[1] == 0) and torch.all(lse[1] == -math.inf)
    assert torch.isfinite(lse[0]).all() and torch.isfinite(lse[2]).all()


def test_strided_cache_views():
    # K and V as views into one [pages, 2, page_size, Hkv, D] buffer; q with padded head stride.
    case = make_case([30, 4], [5, 2], hq=4, hkv=2, d=32, page_size=8, seed=9, tree=True)
    both = torch.stack([case.k_cache, case.v_cache], dim=1)
    q_pad = torch.zeros(case.q.shape[0], 4, 40)
    q_pad[..., :32] = case.q
    q_view = q_pad[..., :32]
    expect = dk.tree_attention(*case.args(), mode="tree", tree_mask=case.tree_mask)
    got = dk.tree_attention(q_view, both[:, 0], both[:, 1], case.block_table, case.kv_lens,
                            case.q_cu_lens, mode="tree", tree_mask=case.tree_mask)
    torch.testing.assert_close(got, expect, atol=0, rtol=0)


def test_append_kv_matches_reference():
    case = make_case([5, 0, 17], [3, 4, 0], hq=4, hkv=2, d=16, page_size=4, seed=11)
    k_cache = torch.randn_like(case.k_cache)
    v_cache = torch.randn_like(case.v_cache)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    dk.append_kv(case.k_new, case.v_new, k_cache, v_cache, case.block_table, case.kv_lens,
                 case.q_cu_lens)
    ref.append_kv(case.k_new, case.v_new, k_ref, v_ref, case.block_table, case.kv_lens,
                  case.q_cu_lens)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_tree_info_matches_reference():
    gen = torch.Generator().manual_seed(12)
    parents = torch.stack([random_parents(70, gen) for _ in range(3)])
    num_nodes = torch.tensor([70, 33, 0])
    prefix = torch.tensor([5, 0, 9])
    mask, depth, pos = dk.tree_info(parents, num_nodes, prefix)
    r_mask, r_depth, r_pos = ref.tree_info(parents, num_nodes, prefix)
    assert mask.shape == (3, 70, 3) and mask.dtype == torch.int32
    assert torch.equal(mask, r_mask) and torch.equal(depth, r_depth) and torch.equal(pos, r_pos)
    # nodes past num_nodes: mask 0, depth 0, position prefix_len
    assert torch.all(mask[1, 33:] == 0) and torch.all(depth[2] == 0) and torch.all(pos[2] == 9)
    # 1-D convenience form
    m1, d1, p1 = dk.tree_info(parents[0])
    assert torch.equal(m1, mask[0]) and torch.equal(d1, depth[0])


def test_tree_info_chain():
    mask, depth, pos = dk.tree_info(torch.arange(-1, 40), prefix_lens=torch.tensor([100]))
    assert depth.tolist() == list(range(41)) and pos.tolist() == list(range(100, 141))
    assert mask[40].tolist() == [-1, 0x1FF]  # 41 bits set: word 0 all ones, 9 bits of word 1


# ---- bad input -----------------------------------------------------------------------------------
def bad_case():
    return make_case([6, 3], [2, 3], hq=4, hkv=2, d=16, page_size=4, seed=13, tree=True)


def expect_error(arg, fn):
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        fn()


def test_bad_input_names_the_argument():
    c = bad_case()
    attn = dk.tree_attention
    expect_error("q", lambda: attn(c.q[:, :3], *c.args()[1:]))  # 3 heads vs 2 KV heads
    expect_error("q", lambda: attn(c.q[..., :8].contiguous(), *c.args()[1:]))  # head dims
    expect_error("k_cache", lambda: attn(c.q, c.k_cache.double(), c.v_cache.double(), *c.args()[3:]))
    expect_error("v_cache", lambda: attn(c.q, c.k_cache, c.v_cache[:-1], *c.args()[3:]))
    bt = c.block_table.clone()
    bt[1, 0] = c.k_cache.shape[0]  # page past the cache
    expect_error("block_table", lambda: attn(c.q, c.k_cache, c.v_cache, bt, c.kv_lens, c.q_cu_lens))
    kv = c.kv_lens.clone()
    kv[0] = c.block_table.shape[1] * 4  # past capacity
    expect_error("kv_lens", lambda: attn(c.q, c.k_cache, c.v_cache, c.block_table, kv, c.q_cu_lens))
    cu = c.q_cu_lens.clone()
    cu[1] = 4  # 0, 4, 5: request 1 then has 1 token, but ...
    cu[2] = 3  # ... decreasing
    expect_error("q_cu_lens", lambda: attn(c.q, c.k_cache, c.v_cache, c.block_table, c.kv_lens, cu))
    expect_error("q_cu_lens", lambda: attn(*c.args()[:5], c.q_cu_lens[:-1]))
    expect_error("tree_mask", lambda: attn(*c.args(), mode="tree"))
    expect_error("tree_mask", lambda: attn(*c.args(), mode="tree", tree_mask=c.tree_mask[:-1]))
    expect_error("mode", lambda: attn(*c.args(), mode="sliding"))
    expect_error("mask_mode", lambda: torch.ops.domino.tree_attention(*c.args(), None, 5, 1.0, False))
    # head_dim > 256
    big_cache = torch.zeros(2, 4, 1, 264)
    expect_error("k_cache", lambda: attn(torch.zeros(2, 2, 264), big_cache, big_cache,
                                         torch.tensor([[0, 1]], dtype=torch.int32),
                                         torch.tensor([3], dtype=torch.int32),
                                         torch.tensor([0, 2], dtype=torch.int32)))
    # mask words too short: a request with 40 new tokens and a one-word mask
    c2 = make_case([2], [40], hq=2, hkv=1, d=16, page_size=8, seed=14)
    expect_error("tree_mask", lambda: attn(*c2.args(), mode="tree",
                                           tree_mask=torch.zeros(40, 1, dtype=torch.int32)))


def test_append_kv_bad_input():
    c = bad_case()
    app = dk.append_kv
    expect_error("k", lambda: app(c.k_new[:, :1], c.v_new, c.k_cache, c.v_cache, *c.args()[3:]))
    expect_error("v", lambda: app(c.k_new, c.v_new[:-1], c.k_cache, c.v_cache, *c.args()[3:]))
    expect_error("k", lambda: app(c.k_new.half(), c.v_new, c.k_cache, c.v_cache, *c.args()[3:]))
    kv = c.kv_lens.clone()
    kv[1] = 100
    expect_error("kv_lens", lambda: app(c.k_new, c.v_new, c.k_cache, c.v_cache, c.block_table,
                                         kv, c.q_cu_lens))


def test_tree_info_bad_input():
    expect_error("parents", lambda: dk.tree_info(torch.tensor([[-1, 0, 2]])))
    expect_error("parents", lambda: dk.tree_info(torch.tensor([[0, 0, 1]])))
    expect_error("num_nodes", lambda: dk.tree_info(torch.tensor([[-1, 0]]), torch.tensor([3])))
    expect_error("num_nodes", lambda: torch.ops.domino.tree_info(
        torch.tensor([[-1, 0]]), torch.tensor([2, 2]), torch.tensor([0])))


# ---- torch.library / torch.compile -----------------------------------------------------------------
def test_opcheck():
    c = make_case([9, 0], [4, 3], hq=4, hkv=2, d=16, page_size=4, seed=15, tree=True)
    torch.library.opcheck(torch.ops.domino.tree_attention.default,
                          (*c.args(), c.tree_mask, 1, 0.25, True))
    torch.library.opcheck(torch.ops.domino.tree_attention.default,
                          (*c.args(), None, 0, 0.25, False))
    torch.library.opcheck(torch.ops.domino.append_kv.default,
                          (c.k_new, c.v_new, c.k_cache.clone(), c.v_cache.clone(),
                           c.block_table, c.kv_lens, c.q_cu_lens))
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 2]])
    torch.library.opcheck(torch.ops.domino.tree_info.default,
                          (parents, torch.tensor([4, 3]), torch.tensor([5, 6])))


def test_torch_compile_fullgraph():
    c = make_case([9, 2], [4, 3], hq=4, hkv=2, d=16, page_size=4, seed=16)
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 1]])

    def step(q, k_new, v_new, k_cache, v_cache, bt, kv, cu):
        dk.append_kv(k_new, v_new, k_cache, v_cache, bt, kv, cu)
        mask, _, _ = dk.tree_info(parents, torch.tensor([4, 3]))
        rows = torch.cat([mask[0, :4], mask[1, :3]])
        return dk.tree_attention(q, k_cache, v_cache, bt, kv, cu, mode="tree", tree_mask=rows,
                                 return_lse=True)

    args = (c.q, c.k_new, c.v_new, c.k_cache.clone(), c.v_cache.clone(), c.block_table,
            c.kv_lens, c.q_cu_lens)
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)


# ---- CUDA ----------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# CUDA vs CPU: both accumulate in fp32 in different orders, so fp32 outputs agree to reduction
# noise; for bf16/fp16 the tensor-core path also rounds P to the input dtype before P V (as
# FlashAttention does), which adds about one rounding of the output dtype.
CUDA_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}


@cuda
@pytest.mark.parametrize("mode", ["causal", "tree", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size,group,d", [(1, 1, 64), (16, 4, 128), (None, 8, 128),
                                                (16, 4, 64), (4, 3, 40)])
@pytest.mark.parametrize("mma", ["1", "0"])  # tensor-core path (bf16/fp16, D 64/128) or CUDA cores
def test_cuda_matches_cpu(mode, dtype, page_size, group, d, mma, monkeypatch):
    monkeypatch.setenv("DOMINO_ATTENTION_MMA", mma)
    if mma == "0" and dtype != torch.bfloat16:
        pytest.skip("the CUDA-core path is covered by fp32 and bf16")
    for idx, (prefix, new) in enumerate(RAGGED + [([2500, 9], [16, 64])]):
        case = make_case(prefix, new, hq=2 * group, hkv=2, d=d, page_size=page_size, dtype=dtype,
                         seed=idx, tree=(mode == "tree"))
        cpu_out, cpu_lse = dk.tree_attention(*case.args(), mode=mode, tree_mask=case.tree_mask,
                                             return_lse=True)
        g = case.to("cuda")
        out, lse = dk.tree_attention(*g.args(), mode=mode, tree_mask=g.tree_mask, return_lse=True)
        tol = CUDA_TOL[dtype]
        torch.testing.assert_close(out.cpu().float(), cpu_out.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(lse.cpu(), cpu_lse, atol=1e-4, rtol=1e-5)


@cuda
def test_cuda_append_kv_and_tree_info_match_cpu():
    case = make_case([5, 0, 17], [3, 40, 0], hq=4, hkv=2, d=64, page_size=4, seed=21)
    g = case.to("cuda")
    kc, vc = torch.zeros_like(g.k_cache), torch.zeros_like(g.v_cache)
    kc_cpu, vc_cpu = torch.zeros_like(case.k_cache), torch.zeros_like(case.v_cache)
    dk.append_kv(g.k_new, g.v_new, kc, vc, g.block_table, g.kv_lens, g.q_cu_lens)
    dk.append_kv(case.k_new, case.v_new, kc_cpu, vc_cpu, case.block_table, case.kv_lens,
                 case.q_cu_lens)
    assert torch.equal(kc.cpu(), kc_cpu) and torch.equal(vc.cpu(), vc_cpu)
    gen = torch.Generator().manual_seed(22)
    parents = torch.stack([random_parents(100, gen) for _ in range(4)])
    num, prefix = torch.tensor([100, 31, 1, 0]), torch.tensor([3, 4, 5, 6])
    got = dk.tree_info(parents.cuda(), num.cuda(), prefix.cuda())
    for a, b in zip(got, dk.tree_info(parents, num, prefix)):
        assert torch.equal(a.cpu(), b)


@cuda
def test_cuda_bad_device_values_are_clamped_not_read():
    # Block-table entries past the cache and lengths past capacity: no fault, documented result
    # (those positions are invisible), checked against the CPU on the valid equivalent.
    case = make_case([20], [4], hq=4, hkv=2, d=64, page_size=4, seed=23)
    g = case.to("cuda")
    bt = g.block_table.clone()
    bt[0, -1] = 10**6
    kv = g.kv_lens.clone()
    out = dk.tree_attention(g.q, g.k_cache, g.v_cache, bt, kv, g.q_cu_lens)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    kv[0] = 10**6
    out = dk.tree_attention(g.q, g.k_cache, g.v_cache, bt, kv, g.q_cu_lens)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
