"""Statistical losslessness of domino::verify (CPU kernel; the CUDA kernel is bit-equal to it,
see test_verify.py).

For every rule, 1e5+ independent verifications run through the batch dimension on a small
vocabulary (V = 6). The joint law of the first two emitted tokens is compared with the law of
sampling the *processed* target directly, P(t1, t2) = p1(t1) p2(t2 | t1), by a G-test over the
V^2 = 36 bins (tests/stats.py). When a request accepts nothing, only t1 is emitted in this step;
its t2 is then drawn directly from p2(.|t1), as the next decode step would. For chains, the law of
the acceptance length is also compared with its closed form.

Every test runs at fixed seeds, so a given build passes or fails deterministically (never flaky).
False-alarm rate: alpha = 1e-4 per G-test; with the 12 G-tests here the chance that the chosen
seeds would flag a correct kernel is about 1.2e-3. The power checks show the same test rejects
plausible bugs (the unprocessed target, or accepting drafts without the residual correction).
"""
import numpy as np
import pytest
import torch

from domino_kernels.reference.verify import target_masses
from .stats import assert_matches_distribution, assert_rejects_distribution

V = 6
N = 100_000
verify_op = torch.ops.domino.verify
RULE = {"target_only": 1, "rejection": 2, "rejection_without_replacement": 3}


def problem(seed):
    """Target logits for the first token (l1 [V]) and for the second given the first (l2 [V, V]),
    and draft distributions q1 [V], q2 [V, V], all random with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    l1 = torch.randn(V, generator=g) * 1.5
    l2 = torch.randn(V, V, generator=g) * 1.5
    q1 = torch.softmax(torch.randn(V, generator=g) * 1.2, -1)
    q2 = torch.softmax(torch.randn(V, V, generator=g) * 1.2, -1)
    return l1, l2, q1, q2


def processed(logits_row, temperature, top_k, top_p):
    w = target_masses(logits_row.numpy(), np.float32(temperature), top_k,
                      np.float32(top_p)).astype(np.float64)
    return w / w.sum()


def draw_children(probs, k, mode, gen):
    """k children per row of ``probs`` [n, V]: top-k (deterministic), i.i.d. or without
    replacement."""
    if mode == "topk":
        return probs.topk(k, -1).indices
    return torch.multinomial(probs, k, replacement=(mode == "iid"), generator=gen)


def two_level_tree(l1, l2, q1, q2, k1, k2, mode, seed):
    """N requests, each a root with k1 children drawn from q1 and, under a child with token x,
    k2 children drawn from q2[x]. Returns op inputs (tokens, parents, logits, draft_probs)."""
    gen = torch.Generator().manual_seed(seed)
    T = 1 + k1 + k1 * k2
    kids = draw_children(q1.expand(N, V), k1, mode, gen)                  # [N, k1]
    grand = draw_children(q2[kids.reshape(-1)], k2, mode, gen).reshape(N, k1 * k2)
    tokens = torch.cat([torch.zeros(N, 1, dtype=torch.int64), kids, grand], 1)
    parents = torch.tensor([-1] + [0] * k1 + [1 + a for a in range(k1) for _ in range(k2)])
    parents = parents.expand(N, T).contiguous()
    logits = torch.zeros(N, T, V)
    logits[:, 0] = l1
    logits[:, 1:1 + k1] = l2[kids]
    drafts = torch.full((N, T, V), 1.0 / V)
    drafts[:, 0] = q1
    drafts[:, 1:1 + k1] = q2[kids]
    return tokens, parents, logits, drafts


def first_two_tokens(accept_len, emitted, p2, seed):
    """(t1, t2) per request; t2 drawn directly from p2[t1] where nothing was accepted."""
    t1 = emitted[:, 0].numpy()
    t2 = emitted[:, 1].numpy().copy()
    rng = np.random.default_rng(seed)
    miss = accept_len.numpy() == 0
    cdf = np.cumsum(p2, 1)
    u = rng.random(int(miss.sum()))
    t2[miss] = np.minimum((u[:, None] > cdf[t1[miss]]).sum(1), V - 1)
    return t1, t2


def joint_counts(t1, t2):
    return np.bincount(t1 * V + t2, minlength=V * V)


def run_tree(rule, mode, k1, k2, seed, temperature=1.0, top_k=0, top_p=1.0, token_probs=False):
    l1, l2, q1, q2 = problem(seed)
    tokens, parents, logits, drafts = two_level_tree(l1, l2, q1, q2, k1, k2, mode, seed + 1)
    T = tokens.shape[1]
    dp, dtp = None, None
    if RULE[rule] >= 2:
        if token_probs:
            dtp = torch.ones(N, T)  # deterministic (top-1) draft: q(x) = 1
        else:
            dp = drafts
    acc, _, emitted = verify_op(
        tokens, parents, torch.full((N,), T), logits, torch.full((N,), temperature),
        torch.full((N,), top_k), torch.full((N,), top_p), dp, dtp,
        torch.arange(N) + 1000 * seed, torch.zeros(N, dtype=torch.int64), RULE[rule])
    p1 = processed(l1, temperature, top_k, top_p)
    p2 = np.stack([processed(l2[x], temperature, top_k, top_p) for x in range(V)])
    t1, t2 = first_two_tokens(acc, emitted, p2, seed)
    return joint_counts(t1, t2), (p1[:, None] * p2).ravel(), acc


CASES = [
    # rule, children, k1, k2, seed, temperature, top_k, top_p
    ("target_only", "topk", 3, 2, 1, 1.0, 0, 1.0),
    ("target_only", "iid", 3, 2, 2, 0.8, 0, 1.0),
    ("rejection", "iid", 3, 2, 3, 1.0, 0, 1.0),
    ("rejection", "iid", 4, 2, 4, 0.7, 4, 0.9),
    ("rejection_without_replacement", "without", 3, 2, 5, 1.0, 0, 1.0),
    ("rejection_without_replacement", "without", 4, 3, 6, 1.3, 5, 0.95),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-k{c[2]}x{c[3]}" for c in CASES])
def test_joint_law_of_first_two_tokens_is_the_processed_target(case):
    rule, mode, k1, k2, seed, temp, top_k, top_p = case
    counts, probs, acc = run_tree(rule, mode, k1, k2, seed, temp, top_k, top_p)
    assert counts.sum() == N
    # both the accepted paths and the residual draws are exercised
    assert 0.1 < (acc >= 1).float().mean() < 0.95 and (acc == 2).any()
    assert_matches_distribution(counts, probs, what=f"{rule}/{mode}")


def test_deterministic_draft_with_token_probs_is_lossless():
    # Chain-of-trees drafted by top-k with q(x) = 1 given as draft_token_probs.
    counts, probs, _ = run_tree("rejection", "topk", 1, 1, 7, token_probs=True)
    assert_matches_distribution(counts, probs, what="rejection/token-probs")


def test_power_the_g_test_rejects_wrong_laws():
    counts, probs, _ = run_tree("rejection", "iid", 3, 2, 3)
    l1, l2, _, _ = problem(3)
    # the unprocessed target at another temperature
    p1 = processed(l1, 1.3, 0, 1.0)
    p2 = np.stack([processed(l2[x], 1.3, 0, 1.0) for x in range(V)])
    assert_rejects_distribution(counts, (p1[:, None] * p2).ravel())
    # a biased verifier: accept every child whose token the target argmax prefers (no residual)
    bad = probs.reshape(V, V).copy()
    bad[np.argmax(bad.sum(1))] *= 1.05
    assert_rejects_distribution(counts, bad.ravel() / bad.sum())


def chain_case(rule, n, seed, temperature=1.0, top_k=0, top_p=1.0):
    """Chains of n drafts with position-independent target (logits l) and draft q, so that the
    acceptance length has a closed form."""
    g = torch.Generator().manual_seed(seed)
    l = torch.randn(V, generator=g) * 1.5
    q = torch.softmax(torch.randn(V, generator=g) * 1.2, -1)
    T = n + 1
    tokens = torch.cat([torch.zeros(N, 1, dtype=torch.int64),
                        torch.multinomial(q.expand(N, V), n, replacement=True, generator=g)], 1)
    parents = (torch.arange(T) - 1).expand(N, T).contiguous()
    acc, _, emitted = verify_op(
        tokens, parents, torch.full((N,), T), l.expand(N, T, V).contiguous(),
        torch.full((N,), temperature), torch.full((N,), top_k), torch.full((N,), top_p),
        q.expand(N, T, V).contiguous() if RULE[rule] >= 2 else None, None,
        torch.arange(N) + 7777 * seed, torch.full((N,), 3), RULE[rule])
    p = processed(l, temperature, top_k, top_p)
    return acc.numpy(), emitted, p, q.double().numpy()


@pytest.mark.parametrize("rule", ["rejection", "rejection_without_replacement", "target_only"])
def test_chain_acceptance_length_matches_closed_form(rule):
    n = 4
    acc, emitted, p, q = chain_case(rule, n, seed=11, temperature=0.9, top_k=5)
    alpha = np.minimum(p, q).sum() if rule != "target_only" else (p * q).sum()
    law = np.array([alpha ** k * (1 - alpha) for k in range(n)] + [alpha ** n])
    assert_matches_distribution(np.bincount(acc, minlength=n + 1), law, what=f"{rule} length")
    # and the first two emitted tokens are i.i.d. from p (the target is context independent)
    t1, t2 = first_two_tokens(torch.from_numpy(acc), emitted, np.tile(p, (V, 1)), 12)
    assert_matches_distribution(joint_counts(t1, t2), np.outer(p, p).ravel(),
                                what=f"{rule} chain joint")
