"""Regression tests for the raw-op hardening: each malformed call below once crashed, returned
uninitialised memory or blamed the wrong argument; the rejection walk once cost children^2 x V.
(The fuzz suite, tests/test_fuzz_ops.py, covers every argument of every op more broadly.)"""
from __future__ import annotations

import math
import time

import pytest
import torch

import domino_kernels as dk
from domino_kernels import reference as ref
from tests.attention_cases import make_case
from tests.verify_cases import op_args

OPS = torch.ops.domino
L = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
I = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731


# ---- counts are checked before they are narrowed to int32 -------------------------------------
@pytest.mark.parametrize("n", [2**31, 2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1])
def test_chain_rollout_huge_num_proposals_raises_before_allocating(n):
    H, G, E, V = 8, 4, 6, 40
    z = torch.zeros
    with pytest.raises(ValueError, match="'num_proposals' must be in \\[1, 4096\\]"):
        OPS.domino_rollout(z(1, 1, H).expand(1, n, H), z(1, 1, V).expand(1, n, V), L(0),
                           z(3 * G, H), z(3 * G, G), z(E, H + G), z(V, E), z(V, H), None, n, True,
                           0, None, None, None, False, 0, None)


@pytest.mark.parametrize("depth", [2**31, 2**32 + 1])
def test_tree_rollout_huge_depth_raises(depth):
    H, G, E, V = 8, 4, 6, 40
    z = torch.zeros
    with pytest.raises(ValueError, match="'depth' must be in \\[1, 4096\\]"):
        OPS.domino_tree_rollout(z(1, 1, H).expand(1, depth, H), z(1, 1, V).expand(1, depth, V),
                                L(0), z(3 * G, H), z(3 * G, G), z(E, H + G), z(V, E), z(V, H), None,
                                True, 0, 2, depth, 8, None, None, None, None)


# ---- one argument on meta, the others on the CPU ----------------------------------------------
def test_meta_mixed_with_cpu_raises_naming_the_argument():
    with pytest.raises(ValueError, match="'temperature' must be on the same device as 'logits'"):
        OPS.sample(torch.randn(2, 50), torch.ones(2).to("meta"), None, None, None, L(0, 0), L(0, 0))
    with pytest.raises(ValueError, match="'prefix_lens' must be on the same device"):
        OPS.tree_info(L(-1, 0).reshape(1, 2), L(2), L(0).to("meta"))


def test_append_kv_with_a_meta_argument_raises_and_writes_nothing():
    case = make_case([3], [2], hq=2, hkv=2, d=16, page_size=4)
    before = case.k_cache.clone()
    with pytest.raises(ValueError, match="'kv_lens' must be on the same device"):
        OPS.append_kv(case.k_new, case.v_new, case.k_cache, case.v_cache, case.block_table,
                      case.kv_lens.to("meta"), case.q_cu_lens)
    assert torch.equal(case.k_cache, before)


def test_all_meta_still_works_for_shape_inference():
    out, lse = OPS.tree_attention(torch.empty(5, 4, 16, device="meta"),
                                  torch.empty(3, 4, 2, 16, device="meta"),
                                  torch.empty(3, 4, 2, 16, device="meta"),
                                  torch.empty(2, 3, dtype=torch.int32, device="meta"),
                                  torch.empty(2, dtype=torch.int32, device="meta"),
                                  torch.empty(3, dtype=torch.int32, device="meta"), None, 0, 0.25, True)
    assert out.device.type == "meta" and out.shape == (5, 4, 16) and lse.shape == (5, 4)


# ---- lengths are validated before the zero-size early returns ----------------------------------
def test_zero_row_block_table_with_new_tokens_raises():
    kc = torch.randn(2, 4, 2, 16)
    args = (kc, kc.clone(), torch.zeros(0, 2, dtype=torch.int32), I(), I(0))
    with pytest.raises(ValueError, match="'block_table' has 0 rows"):
        OPS.tree_attention(torch.randn(3, 2, 16), *args, None, 0, 0.25, True)
    with pytest.raises(ValueError, match="'block_table' has 0 rows"):
        OPS.append_kv(torch.randn(3, 2, 16), torch.randn(3, 2, 16), *args)


def test_zero_new_tokens_with_nonzero_q_cu_lens_raises():
    case = make_case([3, 1], [2, 3], hq=2, hkv=2, d=16, page_size=4)
    with pytest.raises(ValueError, match="'q_cu_lens' must end at the number of new tokens \\(0\\)"):
        OPS.tree_attention(case.q[:0], case.k_cache, case.v_cache, case.block_table, case.kv_lens,
                           case.q_cu_lens, None, 0, 0.25, True)
    with pytest.raises(ValueError, match="'q_cu_lens' must end"):
        OPS.append_kv(case.k_new[:0], case.v_new[:0], case.k_cache, case.v_cache,
                      case.block_table, case.kv_lens, case.q_cu_lens)


def test_q_cu_lens_overflow_is_blamed_on_q_cu_lens():
    case = make_case([3, 1], [2, 3], hq=2, hkv=2, d=16, page_size=4)
    with pytest.raises(ValueError, match="'q_cu_lens' must be non-decreasing"):
        OPS.tree_attention(case.q, case.k_cache, case.v_cache, case.block_table, case.kv_lens,
                           I(0, 2**31 - 1, 5), None, 0, 0.25, True)


# ---- attention numerics at the edges -----------------------------------------------------------
def test_scale_that_overflows_fp32_raises():
    case = make_case([3], [2], hq=2, hkv=2, d=16, page_size=4)
    for scale in (1e39, -1e39, math.inf, math.nan):
        with pytest.raises(ValueError, match="'scale' must be finite as a float32"):
            OPS.tree_attention(*case.args(), None, 0, scale, True)


@pytest.mark.parametrize("prefix", [5, 3000])  # 3000: the long prefix is split (merge path)
def test_nan_or_overflowing_scores_give_nan_rows_only(prefix):
    case = make_case([prefix, 4], [2, 3], hq=4, hkv=2, d=16, page_size=16)
    good_out, good_lse = dk.tree_attention(*case.args(), return_lse=True)
    q = case.q.clone()
    q[0] = math.nan                 # request 0, token 0: every head NaN
    q[3, 1] = 3e38                  # request 1, token 1, head 1: scaled scores overflow
    out, lse = dk.tree_attention(q, *case.args()[1:], scale=1e3, return_lse=True)
    assert out[0].isnan().all() and lse[0].isnan().all()
    assert out[3, 1].isnan().all() and lse[3, 1].isnan()
    finite = torch.ones(5, 4, dtype=torch.bool)
    finite[0] = False
    finite[3, 1] = False
    assert not out[finite].isnan().any() and not lse[finite].isnan().any()
    # the NaN rows do not leak into the others: those equal a run without the bad rows
    ref_out, ref_lse = dk.tree_attention(torch.where(finite[..., None], q, case.q),
                                         *case.args()[1:], scale=1e3, return_lse=True)
    torch.testing.assert_close(out[finite], ref_out[finite])
    assert good_out.isfinite().all() and good_lse.isfinite().all()


def test_nan_in_a_visible_key_poisons_only_the_rows_that_see_it():
    case = make_case([0], [3], hq=2, hkv=1, d=16, page_size=8)
    page = int(case.block_table[0, 0])
    case.k_cache[page, 2] = math.nan  # new token 2: causal rows 0 and 1 do not see it
    out, lse = dk.tree_attention(*case.args(), return_lse=True)
    assert lse[2].isnan().all() and out[2].isnan().all()
    assert lse[:2].isfinite().all() and out[:2].isfinite().all()


# ---- tree_info -----------------------------------------------------------------------------------
def test_tree_info_checks_prefix_lens_and_num_nodes_before_early_returns():
    par = L(-1, 0, 0).reshape(1, 3)
    for bad in (-100, 2**63 - 1, 2**31 - 3):
        with pytest.raises(ValueError, match="'prefix_lens' must be in \\[0, 2\\^31 - 1 - T\\]"):
            OPS.tree_info(par, L(3), L(bad))
    with pytest.raises(ValueError, match="'num_nodes' must be in \\[0, 0\\]"):
        OPS.tree_info(torch.zeros(2, 0, dtype=torch.int64), L(5, 5), L(0, 0))
    _, _, pos = OPS.tree_info(par, L(3), L(2**31 - 4))
    assert pos.tolist() == [[2**31 - 4, 2**31 - 3, 2**31 - 3]]


# ---- messages name the argument ---------------------------------------------------------------
def test_none_and_sparse_tensors_are_named():
    args = [torch.randn(2, 50), torch.ones(2), None, None, None, L(0, 0), L(0, 0)]
    for i, name in [(0, "logits"), (1, "temperature"), (5, "seed")]:
        bad = list(args)
        bad[i] = None
        with pytest.raises(ValueError, match=f"'{name}' is required, got None"):
            OPS.sample(*bad)
        bad[i] = args[i].to_sparse()
        with pytest.raises(ValueError, match=f"'{name}' must be a dense"):
            OPS.sample(*bad)
    with pytest.raises(ValueError, match="'w2' is required, got None"):
        OPS.pack_w2(None)


def test_cache_dtype_is_blamed_on_the_cache():
    case = make_case([3], [2], hq=2, hkv=2, d=16, page_size=4)
    with pytest.raises(ValueError, match="'k_cache' must have dtype float32, bfloat16 or float16"):
        OPS.append_kv(case.k_new, case.v_new, case.k_cache.double(), case.v_cache,
                      case.block_table, case.kv_lens, case.q_cu_lens)


# ---- the recursive rejection walk is O(children x V) per node -----------------------------------
def star(children, V, dup_vocab=None, gen=None):
    """One request: a root with `children` children whose tokens the target gives ~0 mass (so
    every child is rejected), q spread over the child tokens."""
    T = children + 1
    parents = torch.zeros(1, T, dtype=torch.int64)
    parents[0, 0] = -1
    toks = torch.arange(children) % (dup_vocab or V)
    if gen is not None:
        toks = torch.randint(0, dup_vocab or V, (children,), generator=gen)
    tokens = torch.zeros(1, T, dtype=torch.int64)
    tokens[0, 1:] = toks
    logits = torch.zeros(1, T, V)
    logits[0, 0, toks] = -30.0
    q = torch.zeros(1, T, V)
    q[0, 0, toks] = 1.0
    q[0, 0] /= q[0, 0].sum()
    return tokens, parents, logits, q


@pytest.mark.parametrize("rule", ["rejection", "rejection_without_replacement"])
@pytest.mark.parametrize("full_rows", [True, False])
def test_wide_star_rejection_is_fast(rule, full_rows):
    tokens, parents, logits, q = star(1023, 4096)
    kw = dict(draft_probs=q) if full_rows else dict(draft_token_probs=torch.full((1, 1024), 1 / 1023))
    t0 = time.perf_counter()
    acc, _, emitted = dk.verify(tokens, parents, logits, rule=rule, temperature=1.0, seed=3, **kw)
    elapsed = time.perf_counter() - t0
    assert acc.item() == 0 and emitted[0, 0].item() >= 1023  # all rejected; a non-child token
    assert elapsed < 1.0, f"{elapsed:.2f} s (children^2 x V would take seconds)"


@pytest.mark.parametrize("rule", ["rejection", "rejection_without_replacement"])
@pytest.mark.parametrize("full_rows", [True, False])
def test_wide_stars_with_repeated_tokens_match_the_reference(rule, full_rows):
    gen = torch.Generator().manual_seed(5)
    for trial in range(6):
        V = [7, 16, 40][trial % 3]
        tokens, parents, logits, q = star(24, V, dup_vocab=min(V, 9), gen=gen)
        logits += torch.randn(logits.shape, generator=gen)  # some children accepted, some not
        q[0, 0] = torch.softmax(torch.randn(V, generator=gen) * 2, -1) if full_rows else q[0, 0]
        kw = dict(draft_probs=q) if full_rows else dict(
            draft_token_probs=torch.rand(1, 25, generator=gen) * 0.9 + 0.05)
        for seed in range(8):
            args = op_args(tokens, parents, logits, rule=rule, temperature=0.8, seed=seed, **kw)
            got = [t.tolist() for t in OPS.verify(*args)]
            want = [t.tolist() for t in ref.verify(*args)]
            assert got == want, (trial, seed)
