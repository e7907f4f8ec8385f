"""domino::verify: exact hand-built cases, kernel == reference under the same seeds, bad input,
opcheck / torch.compile, and CUDA == CPU (skipped without a GPU). Distribution tests live in
test_verify_stats.py."""
import pytest
import torch

import domino_kernels as dk
from domino_kernels import reference as ref
from .conftest import requires_cuda
from .verify_cases import one_hot_logits, op_args, random_parents, to_device

verify_op = torch.ops.domino.verify


def run(*args, **kw):
    return verify_op(*op_args(*args, **kw))


def lists(out):
    return [t.tolist() for t in out]


# ---------------------------------------------------------------- exact greedy cases


def test_chain_all_accepted_emits_bonus():
    tokens = torch.tensor([[7, 1, 2, 3]])
    # the target's argmax after node i is the token of node i+1; after the last node: 9 (bonus)
    logits = one_hot_logits([[1, 2, 3, 9]], 12)
    acc, path, emitted = run(tokens, dk.chain_parents(1, 4), logits)
    assert lists((acc, path, emitted)) == [[3], [[0, 1, 2, 3]], [[1, 2, 3, 9]]]


def test_chain_first_mismatch_emits_correction_and_pads():
    tokens = torch.tensor([[7, 1, 5, 3]])
    logits = one_hot_logits([[1, 2, 3, 9]], 12)
    acc, path, emitted = run(tokens, dk.chain_parents(1, 4), logits)
    assert lists((acc, path, emitted)) == [[1], [[0, 1, -1, -1]], [[1, 2, -1, -1]]]


def test_root_mismatch_and_empty_draft():
    tokens = torch.tensor([[7, 4, 5], [7, 1, 2]])
    logits = one_hot_logits([[1, 2, 3], [1, 2, 3]], 8)
    # request 0 rejects at the root; request 1 has an empty draft (num_nodes = 1): bonus only
    acc, path, emitted = run(tokens, dk.chain_parents(2, 3), logits,
                             num_nodes=torch.tensor([3, 1]))
    assert lists((acc, path, emitted)) == [[0, 0], [[0, -1, -1], [0, -1, -1]],
                                           [[1, -1, -1], [1, -1, -1]]]


def test_one_node_tree_emits_target_argmax():
    logits = one_hot_logits([[5]], 8)
    acc, path, emitted = run(torch.tensor([[3]]), torch.tensor([[-1]]), logits)
    assert lists((acc, path, emitted)) == [[0], [[0]], [[5]]]


def test_star_and_deep_tree():
    # star: root with 4 children; the target picks the third child's token, then 6 (bonus)
    tokens = torch.tensor([[0, 1, 2, 3, 4]])
    parents = torch.tensor([[-1, 0, 0, 0, 0]])
    logits = one_hot_logits([[3, 0, 0, 6, 0]], 8)
    assert lists(run(tokens, parents, logits)) == [[1], [[0, 3, -1, -1, -1]], [[3, 6, -1, -1, -1]]]
    # deep tree: 0 -> {1, 2}, 2 -> {3, 4}, 4 -> {5}; path 0-2-4-5 then bonus 7
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5]])
    parents = torch.tensor([[-1, 0, 0, 2, 2, 4]])
    logits = one_hot_logits([[2, 0, 4, 0, 5, 7]], 8)
    assert lists(run(tokens, parents, logits)) == [[3], [[0, 2, 4, 5, -1, -1]],
                                                   [[2, 4, 5, 7, -1, -1]]]


def test_shuffled_sibling_order_gives_the_same_tokens():
    # The same tree with its children listed in two orders (node indices permuted).
    V = 16
    tok_a = torch.tensor([[0, 3, 5, 9, 11, 12]])
    par_a = torch.tensor([[-1, 0, 0, 0, 2, 2]])
    tok_b = torch.tensor([[0, 9, 5, 3, 12, 11]])  # siblings reversed at both levels
    par_b = torch.tensor([[-1, 0, 0, 0, 2, 2]])
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(V, V, generator=gen) * 3  # the target row depends on the node's token
    log_a = torch.stack([rows[t] for t in tok_a[0]]).unsqueeze(0)
    log_b = torch.stack([rows[t] for t in tok_b[0]]).unsqueeze(0)
    one = torch.ones(1, dtype=torch.int64)
    for rule, temp in (("greedy", 0.0), ("target_only", 1.0)):
        for s in range(40):
            _, _, ea = run(tok_a, par_a, log_a, rule=rule, temperature=temp, seed=s * one)
            _, _, eb = run(tok_b, par_b, log_b, rule=rule, temperature=temp, seed=s * one)
            assert torch.equal(ea, eb), (rule, s)


def test_duplicate_children_first_node_wins():
    tokens = torch.tensor([[0, 4, 4]])
    parents = torch.tensor([[-1, 0, 0]])
    logits = one_hot_logits([[4, 1, 2]], 8)
    assert lists(run(tokens, parents, logits)) == [[1], [[0, 1, -1]], [[4, 1, -1]]]


def test_temperature_zero_is_greedy_under_every_rule():
    gen = torch.Generator().manual_seed(1)
    B, T, V = 16, 7, 40
    tokens = torch.randint(0, V, (B, T), generator=gen)
    parents = random_parents(B, T, gen)
    logits = torch.randn(B, T, V, generator=gen)
    q = torch.softmax(torch.randn(B, T, V, generator=gen), -1)
    expect = run(tokens, parents, logits)
    for rule in ("target_only", "rejection", "rejection_without_replacement"):
        got = run(tokens, parents, logits, rule=rule, draft_probs=q, seed=5)
        assert lists(got) == lists(expect), rule


def test_padding_nodes_beyond_num_nodes_are_ignored():
    # A chain of 3 in a T = 6 layout: garbage (out-of-range ids, bad parents, NaN logits) in the
    # padding gives the same result as the tight chain.
    gen = torch.Generator().manual_seed(2)
    V = 30
    tokens = torch.randint(0, V, (4, 3), generator=gen)
    logits = torch.randn(4, 3, V, generator=gen)
    tight = run(tokens, dk.chain_parents(4, 3), logits, rule="target_only", temperature=1.0,
                seed=torch.arange(4))
    pad_tok = torch.cat([tokens, torch.full((4, 3), 10**6)], 1)
    pad_par = torch.cat([dk.chain_parents(4, 3), torch.full((4, 3), 99)], 1)
    pad_log = torch.cat([logits, torch.full((4, 3, V), float("nan"))], 1)
    padded = run(pad_tok, pad_par, pad_log, rule="target_only", temperature=1.0,
                 num_nodes=3, seed=torch.arange(4))
    assert torch.equal(padded[0], tight[0])
    assert torch.equal(padded[1][:, :3], tight[1]) and (padded[1][:, 3:] == -1).all()
    assert torch.equal(padded[2][:, :3], tight[2]) and (padded[2][:, 3:] == -1).all()


# ---------------------------------------------------------------- kernel == reference


def random_case(B, T, V, gen, dtype=torch.float32, scale=2.0):
    tokens = torch.randint(0, V, (B, T), generator=gen)
    parents = random_parents(B, T, gen)
    logits = (torch.randn(B, T, V, generator=gen) * scale).to(dtype)
    q = torch.softmax(torch.randn(B, T, V, generator=gen) * 2, -1)
    num_nodes = torch.randint(1, T + 1, (B,), generator=gen)
    return tokens, parents, logits, q, num_nodes


def make_drafts_likely(tokens, parents, logits, num_nodes):
    """Re-draw each node's token as the target argmax of its parent half of the time, so the
    walks go deep."""
    B, T = tokens.shape
    tok = tokens.clone()
    am = logits.float().argmax(-1)
    for b in range(B):
        for i in range(1, T):
            if (b + i) % 2 == 0:
                tok[b, i] = am[b, parents[b, i]]
    return tok


@pytest.mark.parametrize("rule", ["greedy", "target_only", "rejection",
                                  "rejection_without_replacement"])
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 2.0), (torch.bfloat16, 2.0),
                                          (torch.float16, 2.0), (torch.float32, 12.0)])
def test_kernel_matches_reference(rule, dtype, scale):
    # scale 12: most tokens lie far below the max (masses that truncate to 0), as in real logits
    gen = torch.Generator().manual_seed(11)
    B, T, V = 24, 9, 97
    tokens, parents, logits, q, nn = random_case(B, T, V, gen, dtype, scale)
    tokens = make_drafts_likely(tokens, parents, logits, nn)
    filters = [dict(), dict(top_k=torch.randint(0, 8, (B,), generator=gen)),
               dict(top_p=torch.rand(B, generator=gen) * 0.9 + 0.1, top_k=5)]
    for f in filters:
        temp = torch.rand(B, generator=gen) * 1.5 + 0.2
        temp[::5] = 0.0  # some greedy requests in a sampled batch
        args = op_args(tokens, parents, logits, rule=rule, num_nodes=nn, temperature=temp,
                       draft_probs=q if rule.startswith("rejection") else None,
                       seed=torch.randint(0, 2**62, (B,), generator=gen), offset=7, **f)
        assert lists(verify_op(*args)) == lists(ref.verify(*args)), f


@pytest.mark.parametrize("rule", ["rejection", "rejection_without_replacement"])
def test_token_probs_mode_matches_reference(rule):
    gen = torch.Generator().manual_seed(12)
    B, T, V = 24, 8, 50
    tokens, parents, logits, _, nn = random_case(B, T, V, gen)
    tokens = make_drafts_likely(tokens, parents, logits, nn)
    qt = torch.rand(B, T, generator=gen) * 0.9 + 0.05
    args = op_args(tokens, parents, logits, rule=rule, num_nodes=nn, temperature=0.9,
                   draft_token_probs=qt, seed=torch.arange(B))
    assert lists(verify_op(*args)) == lists(ref.verify(*args))


def test_deterministic_top1_draft_token_probs_equals_target_only_law():
    # q(x) = 1 for a single-child chain: rejection accepts w.p. p(x) and resamples p without x,
    # which is the target-only rule; both are exact, so both emit tokens in the target support.
    gen = torch.Generator().manual_seed(4)
    B, T, V = 8, 5, 20
    tokens = torch.randint(0, V, (B, T), generator=gen)
    logits = torch.randn(B, T, V, generator=gen)
    out = run(tokens, dk.chain_parents(B, T), logits, rule="rejection", temperature=1.0,
              draft_token_probs=torch.ones(B, T), seed=torch.arange(B))
    assert lists(out) == lists(ref.verify(*op_args(
        tokens, dk.chain_parents(B, T), logits, rule="rejection", temperature=1.0,
        draft_token_probs=torch.ones(B, T), seed=torch.arange(B))))


def test_seed_and_offset_reproduce_and_change_results():
    gen = torch.Generator().manual_seed(5)
    B, T, V = 64, 6, 30
    tokens, parents, logits, q, nn = random_case(B, T, V, gen)
    a = run(tokens, parents, logits, rule="rejection", temperature=1.0, draft_probs=q, seed=3)
    b = run(tokens, parents, logits, rule="rejection", temperature=1.0, draft_probs=q, seed=3)
    c = run(tokens, parents, logits, rule="rejection", temperature=1.0, draft_probs=q, seed=3,
            offset=1)
    assert lists(a) == lists(b)
    assert not torch.equal(a[2], c[2])


def test_one_node_target_only_samples_from_the_processed_target_support():
    # One-node tree + target_only = sampling the processed target: the token always lies in
    # domino::sample's kept set (same filter code).
    gen = torch.Generator().manual_seed(6)
    B, V = 256, 64
    logits = torch.randn(B, 1, V, generator=gen) * 3
    tk, tp = 7, 0.6
    _, _, emitted = run(torch.zeros(B, 1, dtype=torch.int64), torch.full((B, 1), -1), logits,
                        rule="target_only", temperature=0.8, top_k=tk, top_p=tp,
                        seed=torch.arange(B))
    import numpy as np
    from domino_kernels.reference.sampling import kept_mask
    for b in range(B):
        s = (logits[b, 0].numpy() / np.float32(0.8)).astype(np.float32)
        assert kept_mask(s, tk, tp, 0.0)[emitted[b, 0]]


# ---------------------------------------------------------------- bad input


def good_args():
    tokens = torch.tensor([[0, 1, 2]])
    return tokens, dk.chain_parents(1, 3), torch.zeros(1, 3, 4)


@pytest.mark.parametrize("mutate, arg", [
    (lambda a: a.__setitem__(1, torch.tensor([[-1, 1, 1]])), "parents"),
    (lambda a: a.__setitem__(1, torch.tensor([[-1, -1, 0]])), "parents"),
    (lambda a: a.__setitem__(0, torch.tensor([[0, 4, 1]])), "draft_tokens"),
    (lambda a: a.__setitem__(0, torch.tensor([[0, -2, 1]])), "draft_tokens"),
    (lambda a: a.__setitem__(2, torch.zeros(1, 3, 5).index_fill_(2, torch.tensor([1]),
                                                                float("nan"))), "logits"),
    (lambda a: a.__setitem__(2, torch.full((1, 3, 4), float("inf"))), "logits"),
    (lambda a: a.__setitem__(2, torch.full((1, 3, 4), float("-inf"))), "logits"),
    (lambda a: a.__setitem__(2, torch.zeros(1, 2, 4)), "logits"),
    (lambda a: a.__setitem__(2, torch.zeros(1, 3, 4, dtype=torch.float64)), "logits"),
    (lambda a: a.__setitem__(1, torch.zeros(1, 2, dtype=torch.int64)), "parents"),
    (lambda a: a.__setitem__(0, torch.zeros(1, 3, dtype=torch.int32)), "draft_tokens"),
])
def test_bad_input_names_the_argument(mutate, arg):
    a = list(good_args())
    mutate(a)
    with pytest.raises(ValueError, match=f"'{arg}'"):
        run(*a)


def test_bad_scalars_and_options_name_the_argument():
    tokens, parents, logits = good_args()
    with pytest.raises(ValueError, match="'num_nodes'"):
        run(tokens, parents, logits, num_nodes=4)
    with pytest.raises(ValueError, match="'num_nodes'"):
        run(tokens, parents, logits, num_nodes=0)
    with pytest.raises(ValueError, match="'temperature'"):
        run(tokens, parents, logits, temperature=-1.0)
    with pytest.raises(ValueError, match="'top_p'"):
        run(tokens, parents, logits, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="'top_k'"):
        run(tokens, parents, logits, temperature=1.0, top_k=-1)
    with pytest.raises(ValueError, match="'draft_probs'"):
        run(tokens, parents, logits, rule="rejection", temperature=1.0)
    with pytest.raises(ValueError, match="'draft_probs'"):
        run(tokens, parents, logits, rule="rejection", temperature=1.0,
            draft_probs=torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="'rule'"):
        verify_op(*op_args(tokens, parents, logits)[:-1], 7)
    with pytest.raises(ValueError, match="'draft_tokens'"):  # T = 0: no root
        run(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, dtype=torch.int64),
            torch.zeros(1, 0, 4))
    with pytest.raises(ValueError, match="'rule'"):
        dk.verify(tokens, parents, logits, rule="lossy")


def test_zero_draft_probability_of_a_drafted_token_raises():
    tokens, parents, logits = good_args()
    q = torch.full((1, 3, 4), 0.25)
    q[0, 0, 1] = 0.0  # node 1 (token 1) was drafted from row 0 with q = 0
    with pytest.raises(ValueError, match="'draft_probs'"):
        run(tokens, parents, logits, rule="rejection", temperature=1.0, draft_probs=q)
    with pytest.raises(ValueError, match="'draft_token_probs'"):
        run(tokens, parents, logits, rule="rejection_without_replacement", temperature=1.0,
            draft_token_probs=torch.tensor([[1.0, 0.0, 1.0]]))


def test_empty_batch():
    out = run(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int64),
              torch.zeros(0, 3, 4))
    assert [t.shape for t in out] == [(0,), (0, 3), (0, 3)]


# ---------------------------------------------------------------- torch integration


def test_python_wrapper_broadcasts_scalars():
    tokens = torch.tensor([[7, 1, 2, 3]])
    logits = one_hot_logits([[1, 2, 3, 9]], 12)
    acc, path, emitted = dk.verify(tokens, dk.chain_parents(1, 4), logits)
    assert acc.tolist() == [3] and emitted.tolist() == [[1, 2, 3, 9]]


def test_opcheck():
    gen = torch.Generator().manual_seed(8)
    tokens, parents, logits, q, nn = random_case(4, 5, 16, gen)
    for rule in ("greedy", "target_only", "rejection"):
        args = op_args(tokens, parents, logits, rule=rule, num_nodes=nn, temperature=1.0,
                       top_k=4, top_p=0.9, draft_probs=q if rule == "rejection" else None, seed=1)
        torch.library.opcheck(verify_op, args)


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(9)
    tokens, parents, logits, q, nn = random_case(4, 5, 16, gen)
    args = op_args(tokens, parents, logits, rule="rejection", num_nodes=nn, temperature=1.0,
                   draft_probs=q, seed=2)

    @torch.compile(fullgraph=True)
    def f(*a):
        acc, path, emitted = verify_op(*a)
        return acc + 0, path, emitted

    assert lists(f(*args)) == lists(verify_op(*args))


# ---------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("rule", ["greedy", "target_only", "rejection",
                                  "rejection_without_replacement"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [5, 64])  # 5: the vocabulary-split pre-pass path; 64: without
def test_cuda_matches_cpu_bit_for_bit(rule, dtype, B):
    gen = torch.Generator().manual_seed(21)
    T, V = 16, 4099
    tokens, parents, logits, q, nn = random_case(B, T, V, gen, dtype)
    tokens = make_drafts_likely(tokens, parents, logits, nn)
    for f in (dict(), dict(top_k=50), dict(top_p=0.8), dict(top_k=100, top_p=0.9)):
        temp = torch.full((B,), 0.9)
        temp[::4] = 0.0  # greedy requests inside a stochastic batch
        args = op_args(tokens, parents, logits, rule=rule, num_nodes=nn, temperature=temp,
                       draft_probs=q if rule.startswith("rejection") else None,
                       seed=torch.arange(B) * 7919, offset=3, **f)
        cpu = verify_op(*args)
        gpu = verify_op(*to_device(args, "cuda"))
        assert lists(cpu) == lists(tuple(t.cpu() for t in gpu)), f


@requires_cuda
def test_cuda_token_probs_mode_matches_cpu():
    gen = torch.Generator().manual_seed(22)
    B, T, V = 32, 8, 1000
    tokens, parents, logits, _, nn = random_case(B, T, V, gen)
    qt = torch.rand(B, T, generator=gen) * 0.9 + 0.05
    args = op_args(tokens, parents, logits, rule="rejection", num_nodes=nn, temperature=1.0,
                   draft_token_probs=qt, seed=torch.arange(B))
    assert lists(verify_op(*args)) == lists(tuple(t.cpu() for t in
                                                  verify_op(*to_device(args, "cuda"))))


@requires_cuda
def test_cuda_bad_device_ids_give_invalid_rows_not_crashes():
    B, T, V = 6, 4, 50
    tokens = torch.randint(0, V, (B, T))
    parents = dk.chain_parents(B, T).clone()
    num_nodes = torch.full((B,), T)
    logits = torch.randn(B, T, V)
    tokens[0, 2] = 10**9          # out of range token id
    tokens[1, 1] = -5
    parents[2, 3] = 3             # parents[i] >= i
    parents[3, 2] = -7
    num_nodes[4] = T + 5          # num_nodes > T
    args = op_args(tokens, parents, logits, num_nodes=num_nodes)
    acc, path, emitted = (t.cpu() for t in verify_op(*to_device(args, "cuda")))
    assert acc[:5].tolist() == [-1] * 5 and (path[:5] == -1).all() and (emitted[:5] == -1).all()
    assert acc[5] >= 0
    expect = ref.verify(*args)
    assert lists((acc, path, emitted)) == lists(expect)


@requires_cuda
def test_cuda_graph_capture_replays_like_eager():
    gen = torch.Generator().manual_seed(23)
    B, T, V = 8, 16, 151936
    tokens, parents, logits, q, nn = random_case(B, T, V, gen, torch.bfloat16)
    args = to_device(op_args(tokens, parents, logits, rule="target_only", num_nodes=nn,
                             temperature=1.0, top_k=50, seed=torch.arange(B)), "cuda")
    eager = verify_op(*args)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = verify_op(*args)
    g.replay()
    torch.cuda.synchronize()
    assert lists(tuple(t.cpu() for t in out)) == lists(tuple(t.cpu() for t in eager))
