"""Domino rollout ops: kernel == O(N) reference == SpecForge quadratic form (token for token),
tree (k=1 == chain, vs reference), sampled drafting (distribution + q), shortlist, GRU table,
mutation check, bf16 agreement, opcheck / torch.compile, bad input, CUDA == CPU."""
import numpy as np
import pytest
import torch

import domino_kernels as dk
from domino_kernels import _C
from domino_kernels import reference as ref
from domino_kernels.reference.rollout import _correction, _gru_input, gru_cell

from .conftest import requires_cuda
from .stats import assert_matches_distribution, assert_rejects_distribution


def make_head(B=4, S=8, H=48, G=32, E=24, V=200, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=0.3: (torch.randn(*s, generator=g) * sc).to(dtype).to(device)  # noqa: E731
    head = dk.DominoHeadWeights(r(3 * G, H), r(3 * G, G), r(E, H + G), r(V, E, sc=1.0))
    emb, hidden, base = r(V, H, sc=1.0), r(B, S, H, sc=1.0), r(B, S, V, sc=1.0)
    anchor = torch.randint(0, V, (B,), generator=g).to(device)
    return head, emb, hidden, base, anchor


def ref_args(head, emb):
    return (*head.tensors(), emb)


def greedy_margins(hidden, base, anchor, head, emb, **kw):
    """log-prob gap between the best and second-best token at every step of the reference chain."""
    _, _, rows = ref.rollout(hidden, base, anchor, *ref_args(head, emb), return_q_rows=True, **kw)
    top2 = torch.log(rows.double().clamp_min(1e-300)).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


@pytest.mark.parametrize("shift_label", [True, False])
@pytest.mark.parametrize("pure_prefix_len", [0, 1, 2])
def test_chain_matches_reference_and_quadratic(shift_label, pure_prefix_len):
    head, emb, hidden, base, anchor = make_head(seed=pure_prefix_len + 10 * shift_label)
    N = 8 if shift_label else 7  # the whole block: S (shift) or S - 1 proposals
    kw = dict(num_proposals=N, shift_label=shift_label, pure_prefix_len=pure_prefix_len)
    tokens, q, q_rows = dk.domino_rollout(hidden, base, anchor, head, emb, **kw)
    r_tokens, r_q, _ = ref.rollout(hidden, base, anchor, *ref_args(head, emb), **kw)
    quad = ref.rollout_quadratic(hidden, base, anchor, *ref_args(head, emb), **kw)
    assert (greedy_margins(hidden, base, anchor, head, emb, **kw) > 1e-4).all()  # not a tie lottery
    assert torch.equal(r_tokens, quad), "O(N) reference != SpecForge quadratic form"
    assert torch.equal(tokens, r_tokens)
    torch.testing.assert_close(q, r_q, atol=2e-6, rtol=1e-5)
    assert q_rows.numel() == 0


def test_q_rows_are_the_draft_distribution():
    head, emb, hidden, base, anchor = make_head(seed=3)
    tokens, q, q_rows = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=6,
                                          return_q_rows=True)
    _, _, r_rows = ref.rollout(hidden, base, anchor, *ref_args(head, emb), num_proposals=6,
                               return_q_rows=True)
    torch.testing.assert_close(q_rows, r_rows, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(q_rows.sum(-1), torch.ones(4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(q_rows.gather(-1, tokens[..., None])[..., 0], q)
    assert torch.equal(q_rows.argmax(-1), tokens)  # greedy: q is the T = 1 probability of the argmax


def test_mutation_moves_the_argmax():
    """Perturbing the winning base logit of a corrected step must move that step's token."""
    head, emb, hidden, base, anchor = make_head(seed=4)
    kw = dict(num_proposals=6, pure_prefix_len=1)
    tokens, _, _ = dk.domino_rollout(hidden, base, anchor, head, emb, **kw)
    step = 3  # a corrected proposal (i = 4 > P)
    lowered = base.clone()
    lowered[torch.arange(4), step, tokens[:, step]] -= 50.0
    moved, _, _ = dk.domino_rollout(hidden, lowered, anchor, head, emb, **kw)
    assert torch.equal(moved[:, :step], tokens[:, :step])
    assert (moved[:, step] != tokens[:, step]).all()
    raised = base.clone()
    target = (tokens[:, step] + 17) % base.shape[-1]
    raised[torch.arange(4), step, target] += 50.0
    forced, _, _ = dk.domino_rollout(hidden, raised, anchor, head, emb, **kw)
    assert torch.equal(forced[:, step], target)


def test_gru_table_path_and_builder():
    head, emb, hidden, base, anchor = make_head(seed=5)
    table = dk.build_gru_table(emb, head.w_ih)
    torch.testing.assert_close(table, emb @ head.w_ih.T, atol=1e-5, rtol=1e-5)
    a = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8)
    b = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8, gru_table=table)
    r = ref.rollout(hidden, base, anchor, *ref_args(head, emb), table, num_proposals=8)
    assert torch.equal(a[0], b[0]) and torch.equal(b[0], r[0])
    torch.testing.assert_close(a[1], b[1], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("shift_label,pure_prefix_len", [(True, 0), (True, 1), (False, 2)])
def test_tree_topk1_equals_chain(shift_label, pure_prefix_len):
    head, emb, hidden, base, anchor = make_head(seed=6)
    N = 7
    chain, cq, _ = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=N,
                                     shift_label=shift_label, pure_prefix_len=pure_prefix_len)
    tokens, parents, q, num, _ = dk.domino_tree_rollout(
        hidden, base, anchor, head, emb, topk=1, depth=N, budget=N, shift_label=shift_label,
        pure_prefix_len=pure_prefix_len)
    assert torch.equal(tokens[:, 0], anchor) and torch.equal(tokens[:, 1:], chain)
    assert torch.equal(parents, torch.arange(-1, N).expand(4, N + 1))
    assert torch.equal(num, torch.full((4,), N + 1))
    torch.testing.assert_close(q[:, 1:], cq)


def _assert_tree_layout(tokens, parents, q, num, budget):
    """Verification layout: node 0 the anchor, parents before children, siblings contiguous,
    padding -1 / -1 / 0, at most budget + 1 nodes."""
    for b in range(tokens.shape[0]):
        n = int(num[b])
        assert 1 <= n <= budget + 1
        assert parents[b, 0] == -1 and (parents[b, 1:n] < torch.arange(1, n)).all()
        assert (parents[b, 1:n] >= 0).all() and (tokens[b, n:] == -1).all()
        assert (parents[b, n:] == -1).all() and (q[b, n:] == 0).all()
        par = parents[b, 1:n].tolist()
        for j in range(1, len(par)):  # siblings contiguous
            assert par[j] == par[j - 1] or par[j] not in par[:j - 1]


def _pool_size(topk, depth):
    return 1 + topk + (depth - 1) * topk * topk


@pytest.mark.parametrize("topk,depth,budget", [(2, 5, 40), (3, 6, 10), (4, 3, 100), (8, 2, 9), (4, 7, 64)])
def test_tree_matches_reference(topk, depth, budget):
    head, emb, hidden, base, anchor = make_head(seed=7 + topk)
    kw = dict(topk=topk, depth=depth, budget=budget, pure_prefix_len=1, return_q_rows=True)
    out = dk.domino_tree_rollout(hidden, base, anchor, head, emb, **kw)
    r = ref.tree_rollout(hidden, base, anchor, *ref_args(head, emb), **kw)
    for got, want in zip(out, r):
        if got.dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        else:
            assert torch.equal(got, want)
    tokens, parents, q, num, q_rows = out
    _assert_tree_layout(tokens, parents, q, num, budget)
    assert (num == min(budget + 1, _pool_size(topk, depth))).all()
    # q rows: a node's children are its distribution's top-k (greedy), with their q
    for b in range(4):
        n = int(num[b])
        for j in range(1, n):
            row = q_rows[b, parents[b, j]]
            assert row.sum() == pytest.approx(1.0, abs=1e-5)
            assert float(row[tokens[b, j]]) == pytest.approx(float(q[b, j]), rel=1e-5)
        expanded = {int(x) for x in parents[b, 1:n]}
        for j in range(n):
            if j not in expanded and q_rows[b, j].any():  # an expanded node whose children were all cut
                assert q_rows[b, j].sum() == pytest.approx(1.0, abs=1e-5)
        assert not q_rows[b, n:].any()


def _spine(tokens, parents, num):
    """Output indices of request b's rank-0 path from the anchor: at every step the first child
    (lowest output index: siblings are laid out in rank order) of the previous node."""
    path, node = [0], 0
    while True:
        kids = [j for j in range(1, int(num)) if int(parents[j]) == node]
        if not kids:
            return path
        node = kids[0]
        path.append(node)


@pytest.mark.parametrize("topk,depth,budget", [(2, 7, 7), (3, 7, 12), (4, 5, 40), (8, 3, 3), (3, 8, 4)])
@pytest.mark.parametrize("shift_label,pure_prefix_len", [(True, 1), (False, 0)])
def test_tree_contains_the_chain_as_a_root_path(topk, depth, budget, shift_label, pure_prefix_len):
    """The spine is pinned: with the same drafter inputs, the greedy tree's rank-0 path holds the
    chain rollout's proposals (tokens and q) to depth min(budget, depth), and a budget <= depth
    emits exactly the chain's first `budget` proposals. So greedy verification of the tree can
    never accept fewer tokens than the chain of min(budget, depth) proposals."""
    head, emb, hidden, base, anchor = make_head(seed=60 + topk + depth, S=9)
    chain, cq, _ = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=depth,
                                     shift_label=shift_label, pure_prefix_len=pure_prefix_len)
    tokens, parents, q, num, _ = dk.domino_tree_rollout(
        hidden, base, anchor, head, emb, topk=topk, depth=depth, budget=budget,
        shift_label=shift_label, pure_prefix_len=pure_prefix_len)
    L = min(budget, depth)
    for b in range(4):
        path = _spine(tokens[b], parents[b], num[b])
        assert len(path) >= L + 1
        assert tokens[b, path[1:L + 1]].tolist() == chain[b, :L].tolist()
        torch.testing.assert_close(q[b, path[1:L + 1]], cq[b, :L])
        if budget <= depth:  # nothing but the chain fits
            assert int(num[b]) == budget + 1 and path == list(range(budget + 1))


def _random_tree_case(rng):
    """A small random rollout problem: shapes, tree parameters, greedy or sampled rows, and base
    logits with NaN / +inf / -inf entries and dead rows."""
    S = int(rng.integers(2, 7))
    V = int(rng.integers(8, 60))
    head, emb, hidden, base, anchor = make_head(B=3, S=S, H=16, G=8, E=8, V=V,
                                                seed=int(rng.integers(1 << 30)))
    depth = int(rng.integers(1, S + 1))
    kw = dict(topk=int(rng.integers(1, 9)), depth=depth, budget=int(rng.integers(1, 40)),
              pure_prefix_len=int(rng.integers(0, depth + 1)), return_q_rows=True)
    if rng.random() < 0.5:
        kw.update(temperature=torch.tensor(rng.choice([0.0, 0.5, 1.0, 3.0], 3), dtype=torch.float32),
                  seed=torch.tensor(rng.integers(0, 1 << 40, 3)), offset=torch.tensor(rng.integers(0, 9, 3)))
    bad = rng.random() < 0.7
    if bad:
        for value, frac in ((float("nan"), 0.05), (float("inf"), 0.02), (-float("inf"), 0.3)):
            base[torch.from_numpy(rng.random(tuple(base.shape)) < frac * rng.random())] = value
        if rng.random() < 0.3:  # a dead row: no valid score, no children
            base[int(rng.integers(3)), int(rng.integers(S))] = float(rng.choice([float("nan"), -float("inf")]))
    return head, emb, hidden, base, anchor, kw, bad


def test_tree_selection_properties_on_random_inputs():
    """Property test over seeded random cases (greedy and sampled, NaN / +-inf logits, dead rows):
    kernel == reference token for token; the emitted tree is ancestor-closed in verification
    layout and within the budget; its rank-0 path is the spine (as deep as the budget allows when
    every row had a valid score)."""
    rng = np.random.default_rng(2024)
    for case in range(40):
        head, emb, hidden, base, anchor, kw, bad = _random_tree_case(rng)
        out = dk.domino_tree_rollout(hidden, base, anchor, head, emb, **kw)
        r = ref.tree_rollout(hidden, base, anchor, *ref_args(head, emb), **kw)
        for i in (0, 1, 3):
            assert torch.equal(out[i], r[i]), (case, kw)
        # q of a row with a +inf logit differs (kernel: q 0 for its finite siblings, reference: NaN)
        if not torch.isposinf(base).any():
            torch.testing.assert_close(out[2], r[2], atol=2e-6, rtol=1e-5, equal_nan=True)
            torch.testing.assert_close(out[4], r[4], atol=2e-6, rtol=1e-5, equal_nan=True)
        _assert_tree_layout(*out[:4], kw["budget"])
        if not bad:
            for b in range(3):
                assert len(_spine(out[0][b], out[1][b], out[3][b])) == min(kw["budget"], kw["depth"]) + 1


def test_tree_goes_deep_along_likely_paths():
    """Greedy dynamic tree: path log-probabilities never increase from parent to child, and the
    budget reaches deeper than a breadth-first tree of the same size could (depth <= log_k)."""
    head, emb, hidden, base, anchor = make_head(seed=31, S=8)
    kw = dict(topk=3, depth=8, budget=12, pure_prefix_len=1)
    tokens, parents, q, num, _ = dk.domino_tree_rollout(hidden, base, anchor, head, emb, **kw)
    for b in range(4):
        n = int(num[b])
        logp = [0.0] * n
        for j in range(1, n):
            logp[j] = logp[int(parents[b, j])] + float(np.log(float(q[b, j])))
        depths = [0] * n
        for j in range(1, n):
            depths[j] = depths[int(parents[b, j])] + 1
        assert all(logp[j] <= logp[int(parents[b, j])] + 1e-6 for j in range(1, n))
        assert max(depths) > 3  # deeper than the breadth-first policy (depth <= log_3 budget)


def test_sampled_chain_and_tree_match_reference():
    head, emb, hidden, base, anchor = make_head(seed=8)
    temp = torch.tensor([0.7, 1.0, 0.0, 2.5])  # row 2 greedy
    seed, offset = torch.tensor([1, 2, 3, 4]) * 1000003, torch.tensor([0, 5, 9, 2])
    s = dict(temperature=temp, seed=seed, offset=offset)
    out = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8, return_q_rows=True, **s)
    r = ref.rollout(hidden, base, anchor, *ref_args(head, emb), num_proposals=8, return_q_rows=True, **s)
    assert torch.equal(out[0], r[0])
    torch.testing.assert_close(out[1], r[1], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out[2], r[2], atol=2e-6, rtol=1e-5)
    kw = dict(topk=3, depth=5, budget=30, return_q_rows=True, **s)
    t = dk.domino_tree_rollout(hidden, base, anchor, head, emb, **kw)
    rt = ref.tree_rollout(hidden, base, anchor, *ref_args(head, emb), **kw)
    assert torch.equal(t[0], rt[0]) and torch.equal(t[1], rt[1]) and torch.equal(t[3], rt[3])
    torch.testing.assert_close(t[2], rt[2], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(t[4], rt[4], atol=2e-6, rtol=1e-5)  # the rows children were drawn from
    _assert_tree_layout(*t[:4], 30)
    for b in range(4):
        n = int(t[3][b])
        for j in range(1, n):
            assert float(t[4][b, t[1][b, j], t[0][b, j]]) == pytest.approx(float(t[2][b, j]), rel=1e-5)
    # a different offset draws different tokens
    other = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8, temperature=temp,
                              seed=seed, offset=offset + 1)
    assert not torch.equal(other[0][[0, 1, 3]], out[0][[0, 1, 3]])


def _tiny_sampling_setup(V):
    head, emb, hidden, base, anchor = make_head(B=1, S=4, H=16, G=8, E=8, V=V, seed=9)
    base = base * 1.5
    return head, emb, hidden, base, anchor


def test_sampled_chain_distribution_and_q():
    """y1 ~ softmax(base_1 / T), y2 | y1 ~ softmax((base_2 + correction(h(anchor, y1))) / T)."""
    V, n, T = 6, 120_000, 0.9
    head, emb, hidden, base, anchor = _tiny_sampling_setup(V)
    e = lambda t: t.expand(n, *t.shape[1:]).contiguous()  # noqa: E731
    tokens, q, _ = dk.domino_rollout(e(hidden), e(base), e(anchor), head, emb, num_proposals=2,
                                     pure_prefix_len=1, temperature=T,
                                     seed=torch.arange(n) * 7 + 1, offset=0)
    w_ih, w_hh, w1, w2 = head.tensors()
    h = gru_cell(_gru_input(int(anchor[0]), emb, w_ih, None), torch.zeros(8), w_hh)
    p1 = torch.softmax(base[0, 0].double() / T, 0)
    joint = np.zeros((V, V))
    for y1 in range(V):
        h2 = gru_cell(_gru_input(y1, emb, w_ih, None), h, w_hh)
        p2 = torch.softmax((base[0, 1] + _correction(w1, w2, hidden[0, 1], h2)).double() / T, 0)
        joint[y1] = (p1[y1] * p2).numpy()
        sel = tokens[:, 0] == y1
        torch.testing.assert_close(q[sel, 1].double(), p2[tokens[sel, 1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q[:, 0].double(), p1[tokens[:, 0]], atol=1e-6, rtol=1e-5)
    counts = np.bincount((tokens[:, 0] * V + tokens[:, 1]).numpy(), minlength=V * V)
    assert_matches_distribution(counts, joint.ravel(), what="chain (y1, y2)")
    assert_rejects_distribution(counts, np.outer(p1.numpy(), np.full(V, 1.0 / V)).ravel())


def test_sampled_tree_children_are_without_replacement():
    """Gumbel top-2 of the root: P(c1 = a, c2 = b) = p_a p_b / (1 - p_a)."""
    V, n, T = 6, 100_000, 1.2
    head, emb, hidden, base, anchor = _tiny_sampling_setup(V)
    e = lambda t: t.expand(n, *t.shape[1:]).contiguous()  # noqa: E731
    tokens, parents, q, num, _ = dk.domino_tree_rollout(
        e(hidden), e(base), e(anchor), head, emb, topk=2, depth=1, budget=2, pure_prefix_len=1,
        temperature=T, seed=torch.arange(n) + 99, offset=3)
    assert (num == 3).all() and (parents[:, 1:] == 0).all()
    p = torch.softmax(base[0, 0].double() / T, 0).numpy()
    # children are numbered by rank: node 1 holds the larger key (the first draw)
    expected = np.array([[p[a] * p[b] / (1 - p[a]) if a != b else 0.0 for b in range(V)] for a in range(V)])
    counts = np.bincount((tokens[:, 1] * V + tokens[:, 2]).numpy(), minlength=V * V)
    assert_matches_distribution(counts, expected.ravel(), what="tree root top-2")
    torch.testing.assert_close(q[:, 1].double(), torch.tensor(p)[tokens[:, 1]], atol=1e-6, rtol=1e-5)


def test_shortlist_candidates():
    head, emb, hidden, base, anchor = make_head(seed=11)
    kw = dict(num_proposals=8, return_q_rows=True)
    for K in (16, 50):
        out = dk.domino_rollout(hidden, base, anchor, head, emb, candidates=K, **kw)
        r = ref.rollout(hidden, base, anchor, *ref_args(head, emb), candidates=K, **kw)
        assert torch.equal(out[0], r[0])
        torch.testing.assert_close(out[2], r[2], atol=2e-6, rtol=1e-5)
        cand = ref.rollout.__globals__["shortlist"](base, 8, 1, K)
        for b in range(4):  # corrected proposals only draft from the shortlist
            assert torch.isin(out[0][b, 1:], cand[b]).all()
    exact = dk.domino_rollout(hidden, base, anchor, head.tensors(), emb, num_proposals=8)  # tuple form
    full = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8, candidates=200)
    assert torch.equal(exact[0], full[0])


@pytest.mark.parametrize("E", [24, 40, 64])  # tail-only, full chunk + tail, full 32-wide chunks
def test_bf16_agrees_within_tie_tolerance(E):
    """bf16 weights: the kernel accumulates in fp32 like the fp32 reference on the same (bf16)
    values; tokens agree up to the first step whose top-2 margin is below 1e-3 (documented)."""
    head, emb, hidden, base, anchor = make_head(seed=12, E=E, dtype=torch.bfloat16)
    kw = dict(num_proposals=8, pure_prefix_len=1)
    tokens, q, _ = dk.domino_rollout(hidden, base, anchor, head, emb, **kw)
    r_tokens, r_q, _ = ref.rollout(hidden, base, anchor, *ref_args(head, emb), **kw)
    margins = greedy_margins(hidden, base, anchor, head, emb, **kw)
    for b in range(4):
        for i in range(8):
            if margins[b, i] < 1e-3:
                break
            assert tokens[b, i] == r_tokens[b, i]
    assert (margins > 1e-3).float().mean() > 0.9  # the check above is not vacuous
    assert torch.equal(tokens, r_tokens)


def test_nan_and_dead_rows():
    head, emb, hidden, base, anchor = make_head(seed=13)
    tokens, _, _ = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=4, pure_prefix_len=1)
    bad = base.clone()
    bad[0, 0, tokens[0, 0]] = float("nan")  # a NaN never wins
    t2, _, _ = dk.domino_rollout(hidden, bad, anchor, head, emb, num_proposals=4, pure_prefix_len=1)
    assert t2[0, 0] != tokens[0, 0] and torch.equal(t2[1:], tokens[1:])
    bad[1, 1] = -float("inf")  # no valid score: token -1, q 0, the request stops
    t3, q3, _ = dk.domino_rollout(hidden, bad, anchor, head, emb, num_proposals=4, pure_prefix_len=2)
    assert (t3[1, 1:] == -1).all() and (q3[1, 1:] == 0).all() and (t3[1, 0] >= 0)


@pytest.mark.parametrize("sampled", [False, True])
def test_tree_with_nan_and_inf_scores_is_defined(sampled):
    """NaN scores never win; +inf wins with q NaN; a NaN path score ranks as -inf (after every
    finite one, then pool order). The tree still has the verification layout, stays within the
    budget and equals the reference."""
    head, emb, hidden, base, anchor = make_head(seed=41, S=8)
    g = torch.Generator().manual_seed(5)
    bad = base.clone()
    for value in (float("nan"), float("inf"), -float("inf")):
        bad[torch.rand(bad.shape, generator=g) < 0.02] = value
    bad[1, 2] = float("nan")  # a whole row without a valid score: no children there
    bad[2, 0, :7] = float("inf")  # several +inf: the lowest ids win, q NaN
    s = dict(temperature=torch.tensor([0.7, 1.0, 0.0, 2.0]), seed=torch.arange(4) + 8,
             offset=torch.zeros(4, dtype=torch.long)) if sampled else {}
    for P in (1, 7):  # corrected and pure-prefix (scores = base) levels
        kw = dict(topk=3, depth=7, budget=20, pure_prefix_len=P, return_q_rows=True, **s)
        out = dk.domino_tree_rollout(hidden, bad, anchor, head, emb, **kw)
        r = ref.tree_rollout(hidden, bad, anchor, *ref_args(head, emb), **kw)
        assert torch.equal(out[0], r[0]) and torch.equal(out[1], r[1]) and torch.equal(out[3], r[3])
        _assert_tree_layout(*out[:4], 20)
        assert ((out[0][:, 1:] == -1) | ((out[0][:, 1:] >= 0) & (out[0][:, 1:] < 200))).all()
        assert (out[3][1] >= 1)


def test_opcheck_and_compile():
    head, emb, hidden, base, anchor = make_head(B=2, seed=14)
    table = dk.build_gru_table(emb, head.w_ih)
    temp, seed, off = torch.tensor([0.0, 0.8]), torch.tensor([1, 2]), torch.tensor([0, 0])
    torch.library.opcheck(torch.ops.domino.domino_rollout.default,
                          (hidden, base, anchor, *head.tensors(), emb, table, 5, True, 1, temp,
                           seed, off, True, 0))
    torch.library.opcheck(torch.ops.domino.domino_tree_rollout.default,
                          (hidden, base, anchor, *head.tensors(), emb, None, True, 1, 2, 3, 6,
                           temp, seed, off))
    torch.library.opcheck(torch.ops.domino.domino_tree_rollout.default,
                          (hidden, base, anchor, *head.tensors(), emb, table, True, 1, 3, 4, 9,
                           temp, seed, off, None, True))
    torch.library.opcheck(torch.ops.domino.build_gru_table.default, (emb, head.w_ih))

    def f(hidden, base, anchor):
        t, q, _ = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=5)
        tt, p, tq, n, rows = dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=2, depth=3,
                                                    budget=6, return_q_rows=True)
        return t, q, tt, p, n, rows

    compiled = torch.compile(f, fullgraph=True)
    for a, b in zip(compiled(hidden, base, anchor), f(hidden, base, anchor)):
        assert torch.equal(a, b)


def test_bad_input_names_the_argument():
    head, emb, hidden, base, anchor = make_head(B=2)
    w_ih, w_hh, w1, w2 = head.tensors()
    op = torch.ops.domino.domino_rollout

    def call(**over):
        a = dict(hidden=hidden, base_logits=base, anchor=anchor, w_ih=w_ih, w_hh=w_hh, w1=w1, w2=w2,
                 embedding=emb, gru_table=None, num_proposals=5, shift_label=True,
                 pure_prefix_len=1, temperature=None, seed=None, offset=None,
                 return_q_rows=False, candidates=0)
        a.update(over)
        return op(*a.values())

    cases = [
        (dict(w_ih=w_ih[:, :-1]), "w_ih"),                      # H mismatch
        (dict(w_hh=w_hh[:, :-1].contiguous()), "w_hh"),         # G mismatch
        (dict(w1=w1[:, :-2].contiguous()), "w1"),               # H + G mismatch
        (dict(w2=w2[:, :-1].contiguous()), "w2"),               # E mismatch
        (dict(embedding=emb[:-1]), "embedding"),                # V mismatch
        (dict(base_logits=base[..., :-1]), "base_logits"),      # V mismatch
        (dict(gru_table=torch.zeros(200, 10)), "gru_table"),
        (dict(anchor=torch.tensor([0, 200])), "anchor"),        # outside [0, V)
        (dict(anchor=torch.tensor([0, -1])), "anchor"),
        (dict(anchor=anchor.int()), "anchor"),
        (dict(num_proposals=9), "num_proposals"),               # larger than the block
        (dict(num_proposals=8, shift_label=False), "num_proposals"),
        (dict(num_proposals=0), "num_proposals"),
        (dict(w2=w2.half()), "w2"),                             # dtype
        (dict(hidden=hidden.double()), "hidden"),
        (dict(temperature=torch.tensor([0.5, 0.5])), "seed"),
        (dict(temperature=torch.tensor([-1.0, 0.5]), seed=torch.tensor([1, 2]),
              offset=torch.tensor([0, 0])), "temperature"),
        (dict(pure_prefix_len=-1), "pure_prefix_len"),
        (dict(candidates=-3), "candidates"),
    ]
    for over, name in cases:
        with pytest.raises(ValueError, match=f"argument '{name}'"):
            call(**over)
    with pytest.raises(ValueError, match="argument 'topk'"):
        torch.ops.domino.domino_tree_rollout(hidden, base, anchor, w_ih, w_hh, w1, w2, emb, None,
                                             True, 1, 9, 3, 10, None, None, None)
    with pytest.raises(ValueError, match="argument 'budget'"):
        torch.ops.domino.domino_tree_rollout(hidden, base, anchor, w_ih, w_hh, w1, w2, emb, None,
                                             True, 1, 2, 3, 0, None, None, None)


# ---------------------------------------------------------------- CUDA == CPU (needs a GPU)
def _to(head, emb, hidden, base, anchor, device):
    return (dk.DominoHeadWeights(*(t.to(device) for t in head.tensors())), emb.to(device),
            hidden.to(device), base.to(device), anchor.to(device))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5, 33])
def test_cuda_chain_equals_cpu(dtype, B):
    cpu = make_head(B=B, S=16, H=64, G=32, E=32, V=3001, seed=20 + B, dtype=dtype)
    gpu = _to(*cpu, "cuda")
    kw = dict(num_proposals=15, pure_prefix_len=1, return_q_rows=True)
    c = dk.domino_rollout(cpu[2], cpu[3], cpu[4], cpu[0], cpu[1], **kw)
    g = dk.domino_rollout(gpu[2], gpu[3], gpu[4], gpu[0], gpu[1], **kw)
    margins = greedy_margins(cpu[2], cpu[3], cpu[4], cpu[0], cpu[1], num_proposals=15, pure_prefix_len=1)
    table = dk.build_gru_table(gpu[1], gpu[0].w_ih)
    gt = dk.domino_rollout(gpu[2], gpu[3], gpu[4], gpu[0], gpu[1], gru_table=table, **kw)
    if dtype == torch.float32:
        ok = (margins > 1e-3).all(dim=1)  # rows without near-ties must agree bit for bit
        assert ok.float().mean() > 0.8
        assert torch.equal(g[0].cpu()[ok], c[0][ok])
        torch.testing.assert_close(g[1].cpu()[ok], c[1][ok], atol=1e-5, rtol=1e-4)
        assert torch.equal(gt[0].cpu()[ok], c[0][ok])
        return
    # bf16: m and h are stored in bf16, and a pre-activation next to a bf16 rounding midpoint can
    # round either way on the two devices (their fp32 sums differ in order; docs/rollout.md,
    # Numerics). Such a flip moves a step's scores by ~1e-3 of their scale: tokens must agree up to
    # a step whose CPU margin is below 0.05, most rows must agree entirely, and q must equal the
    # CPU's to fp32 order on most rows.
    for tokens in (g[0].cpu(), gt[0].cpu()):
        for b in range(B):
            first = (tokens[b] != c[0][b]).nonzero()
            if len(first):
                assert margins[b, first[0, 0]] < 0.05, (b, first[0, 0].item())
        assert (tokens == c[0]).all(dim=1).float().mean() >= min(0.8, (B - 1) / B)  # one row may flip
    close = ((g[1].cpu() - c[1]).abs() <= 1e-5 + 1e-4 * c[1].abs()).all(dim=1)
    assert close.float().mean() >= min(0.8, (B - 1) / B)


@requires_cuda
def test_cuda_sampled_tree_and_shortlist_equal_cpu():
    cpu = make_head(B=6, S=16, H=64, G=32, E=32, V=2000, seed=31)
    gpu = _to(*cpu, "cuda")
    s = dict(temperature=torch.tensor([0.0, 0.5, 1.0, 1.5, 0.8, 0.0]), seed=torch.arange(6) + 3, offset=1)
    sg = dict(temperature=s["temperature"].cuda(), seed=s["seed"].cuda(), offset=1)
    c = dk.domino_rollout(cpu[2], cpu[3], cpu[4], cpu[0], cpu[1], num_proposals=10, **s)
    g = dk.domino_rollout(gpu[2], gpu[3], gpu[4], gpu[0], gpu[1], num_proposals=10, **sg)
    assert torch.equal(g[0].cpu(), c[0])
    for kw in (dict(topk=1, depth=10, budget=10), dict(topk=3, depth=4, budget=25),
               dict(topk=4, depth=12, budget=40, return_q_rows=True)):
        ct = dk.domino_tree_rollout(cpu[2], cpu[3], cpu[4], cpu[0], cpu[1], **kw, **s)
        gt = dk.domino_tree_rollout(gpu[2], gpu[3], gpu[4], gpu[0], gpu[1], **kw, **sg)
        for a, b in zip(gt, ct):
            if a.dtype == torch.float32:
                torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-4)
            else:
                assert torch.equal(a.cpu(), b)
    c = dk.domino_rollout(cpu[2], cpu[3], cpu[4], cpu[0], cpu[1], num_proposals=10, candidates=64)
    g = dk.domino_rollout(gpu[2], gpu[3], gpu[4], gpu[0], gpu[1], num_proposals=10, candidates=64)
    assert torch.equal(g[0].cpu(), c[0])


@requires_cuda
def test_cuda_bad_device_ids_are_defined():
    cpu = make_head(B=3, seed=32)
    gpu = _to(*cpu, "cuda")
    anchor = torch.tensor([5, -7, 10**9], device="cuda")  # not read on the host: zero GRU input
    t, q, _ = dk.domino_rollout(gpu[2], gpu[3], anchor, gpu[0], gpu[1], num_proposals=5)
    torch.cuda.synchronize()
    assert ((t >= 0) & (t < 200)).all()


@requires_cuda
def test_cuda_device_mismatch_and_graph_capture():
    cpu = make_head(B=4, S=16, H=64, G=32, E=32, V=1000, seed=33)
    gpu = _to(*cpu, "cuda")
    head, emb, hidden, base, anchor = gpu
    with pytest.raises(ValueError, match="argument 'w2'"):
        torch.ops.domino.domino_rollout(hidden, base, anchor, head.w_ih, head.w_hh, head.w1,
                                        head.w2.cpu(), emb, None, 8, True, 1, None, None, None,
                                        False, 0)
    temp = torch.full((4,), 0.7, device="cuda")
    seed = torch.arange(4, device="cuda")
    offset = torch.zeros(4, dtype=torch.int64, device="cuda")
    run = lambda: dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8,  # noqa: E731
                                    temperature=temp, seed=seed, offset=offset)
    eager = run()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[0], eager[0])
    offset += 1  # the graph reads seeds/offsets from device memory: new draws, no recapture
    graph.replay()
    torch.cuda.synchronize()
    fresh = run()
    assert torch.equal(captured[0], fresh[0])


def _run_fresh(code: str, **env_over: str) -> None:
    """Runs ``code`` in a fresh interpreter (the kernel choice is made once per process) with the
    environment variables ``env_over`` set; it must print 'ok'."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, **env_over)
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_portable_cpu_path_matches_reference():
    """The non-AVX-512 code path (forced by DOMINO_DISABLE_AVX512=1 in a fresh process)."""
    code = (
        "import torch, domino_kernels as dk\n"
        "from domino_kernels import reference as ref\n"
        "from tests.test_rollout import make_head\n"
        "head, emb, hidden, base, anchor = make_head(seed=21)\n"
        "s = dict(temperature=torch.tensor([0.0, 0.9, 1.3, 0.0]), seed=torch.arange(4), offset=torch.zeros(4, dtype=torch.int64))\n"
        "for kw in (dict(), s):\n"
        "    out = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=8, return_q_rows=True, **kw)\n"
        "    r = ref.rollout(hidden, base, anchor, *head.tensors(), emb, num_proposals=8, return_q_rows=True, **kw)\n"
        "    assert torch.equal(out[0], r[0]), (out[0], r[0])\n"
        "    torch.testing.assert_close(out[2], r[2], atol=2e-6, rtol=1e-5)\n"
        "t = dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=3, depth=4, budget=20)\n"
        "rt = ref.tree_rollout(hidden, base, anchor, *head.tensors(), emb, topk=3, depth=4, budget=20)\n"
        "assert torch.equal(t[0], rt[0]) and torch.equal(t[1], rt[1])\n"
        "print('ok')\n")
    _run_fresh(code, DOMINO_DISABLE_AVX512="1")


_BF16_KERNEL_CHECK = (
    "import torch, domino_kernels as dk\n"
    "from domino_kernels import reference as ref\n"
    "from tests.test_rollout import make_head, close_rows\n"
    "close = []\n"
    "for E in (24, 40, 64):\n"
    "  for seed in (31, 32, 33, 34):\n"
    "    head, emb, hidden, base, anchor = make_head(seed=seed, E=E, dtype=torch.bfloat16)\n"
    "    out = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=7, return_q_rows=True)\n"
    "    r = ref.rollout(hidden, base, anchor, *head.tensors(), emb, num_proposals=7, return_q_rows=True)\n"
    "    assert torch.equal(out[0], r[0]), (E, seed, out[0], r[0])\n"
    "    close.append(close_rows(out[2], r[2]))\n"
    "    t = dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=2, depth=4, budget=12)\n"
    "    rt = ref.tree_rollout(hidden, base, anchor, *head.tensors(), emb, topk=2, depth=4, budget=12)\n"
    "    assert torch.equal(t[0], rt[0]) and torch.equal(t[1], rt[1]), (E, seed)\n"
    "assert sum(close) / len(close) >= 0.9, close\n"
    "print('ok')\n")


def close_rows(q, r, atol=2e-6, rtol=2e-5, flip=1e-3):
    """Fraction of q rows [B, N, V] equal to r's up to fp32 accumulation order. With m and h stored
    in bf16, an element that lands next to a bf16 rounding midpoint can round the other way on the
    other side (one bf16 ulp of one activation): such rows differ by more, but never by more than
    `flip` (asserted)."""
    diff = (q - r).abs()
    assert diff.max() <= flip, diff.max()
    ok = (diff <= atol + rtol * r.abs()).all(dim=-1)
    return ok.float().mean().item()


@pytest.mark.parametrize("disable", ["", "DOMINO_DISABLE_AVX512BF16", "DOMINO_DISABLE_AVX512"])
def test_bf16_cpu_kernels_match_reference(disable):
    """bf16 weights through each CPU kernel (vdpbf16ps where the CPU has AVX512_BF16, the fp32-FMA
    AVX-512 kernel, the portable code), each in a fresh process: tokens equal the reference's and
    q rows agree to fp32 accumulation order, because m and h are stored in bf16 on both sides. The
    reference's bf16 matmuls accumulate in a CPU-dependent order (oneDNN on AMX differs from
    AVX-512), so an activation next to a bf16 rounding midpoint can round the other way and move
    a few rows by up to ``flip``: 90 % of the rows of 12 heads (336 rows) must agree to fp32 order
    (on an Intel Xeon with AMX, 4 rows of one head flipped: 14 % of that head's 28 rows)."""
    _run_fresh(_BF16_KERNEL_CHECK, **({disable: "1"} if disable else {}))


def test_bf16_activations_are_stored_in_bf16():
    """The contract is not vacuous: the same bf16 weight values as fp32 tensors (nothing rounded)
    give q rows that mostly differ from the bf16 run by more than the tolerance used above."""
    head, emb, hidden, base, anchor = make_head(seed=31, E=40, dtype=torch.bfloat16)
    head32 = dk.DominoHeadWeights(*(t.float() for t in head.tensors()))
    q16 = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=7, return_q_rows=True)[2]
    q32 = dk.domino_rollout(hidden.float(), base, anchor, head32, emb.float(), num_proposals=7,
                            return_q_rows=True)[2]
    r32 = ref.rollout(hidden.float(), base, anchor, *head32.tensors(), emb.float(), num_proposals=7,
                      return_q_rows=True)[2]
    torch.testing.assert_close(q32, r32, atol=2e-6, rtol=2e-5)
    ok = ((q16 - q32).abs() <= 2e-6 + 2e-5 * q32.abs()).all(dim=-1)
    assert ok[:, 1:].float().mean() < 0.5  # proposal 1 is uncorrected (P = 1): equal there


# ---------------------------------------------------------------- packed W2 (pack_w2)
def _packed_reference(w2: torch.Tensor) -> torch.Tensor:
    """The layout of rollout.h, written out: word (g, j, l) = W2[16g + l, 2j] | W2[16g + l, 2j + 1]
    << 16 (bf16 bits), zero past V and past an odd E."""
    V, E = w2.shape
    G, J = (V + 15) // 16, (E + 1) // 2
    bits = torch.zeros(G * 16, 2 * J, dtype=torch.int64)
    bits[:V, :E] = w2.view(torch.int16).to(torch.int64) & 0xFFFF
    words = bits[:, 0::2] | (bits[:, 1::2] << 16)                     # [16G, J]
    words = words.view(G, 16, J).transpose(1, 2)                      # [G, J, 16]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


@pytest.mark.parametrize("E,V", [(24, 200), (25, 211), (64, 256)])  # V and E tails, whole groups
def test_pack_w2_layout(E, V):
    head = make_head(E=E, V=V, dtype=torch.bfloat16)[0]
    assert torch.equal(dk.pack_w2(head.w2), _packed_reference(head.w2))


@pytest.mark.parametrize("E,V", [(24, 200), (25, 211), (64, 256)])
def test_packed_w2_gives_the_same_rollout(E, V):
    """The packed kernel (used where the CPU has AVX512_BF16) computes the same bf16 products as
    the row kernel, summed in another order: same tokens, chain and tree, greedy and sampled, and
    q rows equal to fp32 rounding."""
    head, emb, hidden, base, anchor = make_head(seed=41, E=E, V=V, dtype=torch.bfloat16)
    pk = dk.pack_w2(head.w2)
    s = dict(temperature=torch.tensor([0.0, 0.9, 1.3, 0.0]), seed=torch.arange(4),
             offset=torch.zeros(4, dtype=torch.int64))
    for kw in (dict(), s):
        a = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=7, return_q_rows=True, **kw)
        b = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=7, return_q_rows=True,
                              w2_packed=pk, **kw)
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[2], b[2], atol=2e-6, rtol=2e-5)
        t = dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=3, depth=4, budget=14, **kw)
        u = dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=3, depth=4, budget=14,
                                   w2_packed=pk, **kw)
        assert torch.equal(t[0], u[0]) and torch.equal(t[1], u[1])
    for B in (1, 2, 3):  # activation-row groups of 1, 2 (+1)
        a = dk.domino_rollout(hidden[:B], base[:B], anchor[:B], head, emb, num_proposals=7)
        b = dk.domino_rollout(hidden[:B], base[:B], anchor[:B], head, emb, num_proposals=7, w2_packed=pk)
        assert torch.equal(a[0], b[0])


def test_packed_w2_bad_input_names_the_argument():
    head, emb, hidden, base, anchor = make_head(B=2, dtype=torch.bfloat16)
    pk = dk.pack_w2(head.w2)
    with pytest.raises(ValueError, match="argument 'w2'"):
        dk.pack_w2(head.w2.float())                                   # not bf16
    with pytest.raises(ValueError, match="argument 'w2'"):
        dk.pack_w2(head.w2[0])                                        # not 2-D
    bad = [pk[:-1], pk.float(), pk.transpose(0, 1), torch.zeros(13, 12, 8, dtype=torch.int32)]
    for p in bad:
        with pytest.raises(ValueError, match="argument 'w2_packed'"):
            dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=5, w2_packed=p)
    with pytest.raises(ValueError, match="argument 'w2_packed'"):
        dk.domino_tree_rollout(hidden, base, anchor, head, emb, topk=2, depth=3, budget=6, w2_packed=pk[1:])
    head32 = dk.DominoHeadWeights(*(t.float() for t in head.tensors()))
    with pytest.raises(ValueError, match="argument 'w2_packed'"):      # fp32 weights
        dk.domino_rollout(hidden.float(), base, anchor, head32, emb.float(), num_proposals=5, w2_packed=pk)


def test_packed_w2_opcheck():
    head, emb, hidden, base, anchor = make_head(B=2, seed=14, dtype=torch.bfloat16)
    pk = dk.pack_w2(head.w2)
    torch.library.opcheck(torch.ops.domino.pack_w2.default, (head.w2,))
    torch.library.opcheck(torch.ops.domino.domino_rollout.default,
                          (hidden, base, anchor, *head.tensors(), emb, None, 5, True, 1, None,
                           None, None, False, 0, pk))
    torch.library.opcheck(torch.ops.domino.domino_tree_rollout.default,
                          (hidden, base, anchor, *head.tensors(), emb, None, True, 1, 2, 3, 6,
                           None, None, None, pk))


@pytest.mark.skipif(not _C.CPU_PACKED_W2, reason="the packed kernel needs AVX512_BF16")
def test_packed_w2_is_what_runs():
    """Mutation check: with AVX512_BF16 the scores come from w2_packed, not from w2 (a zeroed
    packed copy leaves only the base logits)."""
    head, emb, hidden, base, anchor = make_head(seed=42, dtype=torch.bfloat16)
    zero = torch.zeros_like(dk.pack_w2(head.w2))
    q = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=5, return_q_rows=True,
                          w2_packed=zero)[2]
    assert torch.allclose(q[:, 1:], torch.softmax(base[:, 1:5].float(), -1), atol=1e-6)


def test_sampled_dynamic_tree_with_rsd_is_lossless():
    """Sampled dynamic tree (budget well below the candidate pool, so the selection prunes) +
    verify(rule="rejection_without_replacement") with the rollout's q rows: the first two emitted
    tokens follow the target exactly. The target is Markov (the law after a node depends on its
    token only), so P(t1, t2) = p(t1 | anchor) p(t2 | t1); where nothing is accepted t2 is drawn
    from p(. | t1) directly, as the next step would (tests/test_verify_stats.py). Fixed seeds;
    false-alarm rate 1e-4 (G-test). Power: scoring sampled children by their own log q (the greedy
    rule) instead makes this test fail with p = 2.6e-75 (checked by building that rule into the kernel)."""
    from .test_verify_stats import first_two_tokens, joint_counts, processed

    V, n = 6, 100_000
    head, emb, hidden, base, anchor = _tiny_sampling_setup(V)
    # A peaked first level and flatter later ones: whether the node after the spine is the root's
    # second draw (wide) or a deeper sibling depends on the drawn q values (both shapes occur).
    base[:, 0] *= 3.0
    base[:, 1:] *= 0.2
    e = lambda t: t.expand(n, *t.shape[1:]).contiguous()  # noqa: E731
    tokens, parents, q, num, rows = dk.domino_tree_rollout(
        e(hidden), e(base), e(anchor), head, emb, topk=2, depth=3, budget=4, pure_prefix_len=1,
        temperature=1.0, seed=torch.arange(n) * 3 + 17, offset=5, return_q_rows=True)
    assert (num == 5).all()  # 5 of 11 candidates kept: the spine (3) and the best other node
    depth = torch.zeros(n, 5, dtype=torch.int64)
    for j in range(1, 5):
        depth[:, j] = depth.gather(1, parents[:, j:j + 1]).squeeze(1) + 1
    assert (depth.max(1).values == 3).all()  # the whole spine is kept
    wide = (parents[:, 1:] == 0).sum(1) == 2  # the off-spine node is a child of the root
    assert wide.any() and (~wide).any()  # both wide and deep trees
    g = torch.Generator().manual_seed(21)
    target = torch.randn(V, V, generator=g) * 1.5  # logits after a node with token x: target[x]
    logits = target[tokens.clamp_min(0)]
    acc, _, emitted = torch.ops.domino.verify(
        tokens, parents, num, logits, torch.ones(n), None, None, rows, None,
        torch.arange(n) + 99, torch.zeros(n, dtype=torch.int64), 3)
    assert 0.1 < (acc >= 1).float().mean() < 0.95 and (acc >= 2).any()
    p = np.stack([processed(target[x], 1.0, 0, 1.0) for x in range(V)])
    t1, t2 = first_two_tokens(acc, emitted, p, 5)
    assert_matches_distribution(joint_counts(t1, t2), (p[int(anchor[0])][:, None] * p).ravel(),
                                what="sampled tree + RSD")
