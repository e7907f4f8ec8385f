"""Sampled speculative decoding and the speculation policies, end to end.

* Lossless at T > 0: chains sampled from the draft's own q (Domino rollout, and DFlash through the
  zero head) and verified by rejection with those q rows; with and without top-k / top-p, a
  separate draft temperature, and a policy that mixes draft lengths with plain steps. Two ragged
  prompts share every batch; 3e4 three-token sequences per prompt are G-tested against the exact
  sequence probabilities of the transformers model (tests/stats.py: alpha = 1e-4 per prompt at
  these fixed seeds, so about 1e-3 for the file; deterministic, never flaky). Power: the same counts
  reject the law of a 10 % different temperature.
* Greedy output equals target-only greedy under every policy, chain and tree.
* An adaptive policy whose cost model makes drafting expensive takes plain steps only, and then
  emits exactly the target-only tokens, greedy and sampled (same seed).
* The policy's estimates and exploration, the statistics, and bad arguments.
"""
import numpy as np
import pytest
import torch

from domino_kernels.generate import generate
from domino_kernels.model.dflash import load_draft
from domino_kernels.model.qwen3 import load_qwen3
from domino_kernels.spec_policy import AcceptanceHistory, AdaptivePolicy, FixedPolicy, StepCosts
from tests.decode_fixtures import make_draft, make_target, single_thread
from tests.stats import assert_matches_distribution, assert_rejects_distribution

_single_thread = single_thread()

VOCAB = 6
PROMPTS = ([1, 4, 2], [3, 0, 5, 1, 2])


class Cycle(FixedPolicy):
    """Draft lengths in a fixed cycle (plain steps included): exercises every length change."""

    name = "cycle"

    def __init__(self, lengths):
        self.lengths, self.i = lengths, 0

    def choose(self, requests, options, remaining=None):
        want = self.lengths[self.i % len(self.lengths)]
        self.i += 1
        return min((o for o in options if o[0] >= want), default=max(options))


def expensive():
    return AdaptivePolicy(StepCosts(plain=1.0, draft=100.0, verify_per_token=1.0, frozen=True))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    hf = make_target(d / "t", vocab=VOCAB, hidden=16, layers=2, heads=2, kv_heads=1, inter=32, init_range=0.5,
                     seed=4)
    target = load_qwen3(str(d / "t"))
    make_draft(d / "d", 16, vocab=VOCAB, mask_token_id=5, heads=2, kv_heads=1, inter=32, target_layer_ids=(0, 1),
               emb_dim=8, gru=8)
    return hf, target, load_draft(str(d / "d"), target)


def _processed(logits, temperature, top_k, top_p):
    """The law ``domino::sample`` draws from (float64): temperature, top-k, then top-p."""
    s = logits.double() / temperature
    if top_k:
        s = s.masked_fill(s < s.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
    p = torch.softmax(s, -1)
    if top_p < 1:
        srt, idx = p.sort(-1, descending=True)
        before = srt.cumsum(-1) - srt                # mass of the larger tokens
        keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, idx, before < top_p)
        p = torch.where(keep, p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    return p.numpy()


def _sequence_law(hf, prompt, temperature, top_k, top_p):
    def probs(prefixes):
        with torch.no_grad():
            return _processed(hf(torch.tensor(prefixes)).logits[:, -1], temperature, top_k, top_p)

    v = VOCAB
    p1 = probs([prompt])[0]
    p2 = probs([prompt + [a] for a in range(v)])
    p3 = probs([prompt + [a, b] for a in range(v) for b in range(v)]).reshape(v, v, v)
    return (p1[:, None, None] * p2[:, :, None] * p3).ravel()


CASES = {
    "domino T1": dict(temperature=1.0),
    "domino T0.8 top-k 4": dict(temperature=0.8, top_k=4),
    "domino T1.2 top-p 0.8, mixed lengths": dict(temperature=1.2, top_p=0.8, policy=lambda: Cycle([3, 0, 1, 3, 2])),
    "domino T1 draft T0.6": dict(temperature=1.0, draft_temperature=0.6),
    "dflash T1": dict(temperature=1.0, use_head=False),
    "domino tree T1": dict(temperature=1.0, tree_topk=2, tree_budget=4, tree_as_chain=False),
    "domino tree T0.8 top-k 4": dict(temperature=0.8, top_k=4, tree_topk=2, tree_budget=4, tree_as_chain=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sampled_chain_with_rejection_has_the_target_sequence_law(small, case):
    hf, target, draft = small
    c = dict(CASES[case])
    temperature, top_k, top_p = c.pop("temperature"), c.pop("top_k", 0), c.pop("top_p", 1.0)
    policy = c.pop("policy", lambda: "fixed")
    counts = {p: np.zeros(VOCAB ** 3) for p in range(len(PROMPTS))}
    taus = []
    for chunk in range(3):
        batch = [PROMPTS[i % 2] for i in range(20000)]     # ragged prompts, interleaved
        out = generate(target, batch, draft=draft, max_new_tokens=3, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=1000 + chunk + 17 * sorted(CASES).index(case), num_proposals=3,
                       spec_policy=policy(), **c)
        assert out.stats["rule"] == ("rejection_without_replacement" if "tree_topk" in c else "rejection")
        seq = np.array(out.tokens)
        for p in counts:
            s = seq[p::2]
            np.add.at(counts[p], s[:, 0] * VOCAB ** 2 + s[:, 1] * VOCAB + s[:, 2], 1)
        taus.append(out.stats["tau"])
    assert min(taus) > 1.3, taus  # drafts were accepted often enough for the rejection path to matter
    for p, prompt in enumerate(PROMPTS):
        assert_matches_distribution(counts[p], _sequence_law(hf, prompt, temperature, top_k, top_p),
                                    what=f"{case}, prompt {p}")
    assert_rejects_distribution(counts[0], _sequence_law(hf, PROMPTS[0], temperature * 1.1, top_k, top_p))


def test_rejection_accepts_at_least_as_much_as_the_target_only_rule_on_the_same_drafts(small):
    """Per position, rejection accepts with probability sum min(p, q) >= sum p q (target-only)."""
    _, target, draft = small
    out = generate(target, [list(p) for p in PROMPTS] * 500, draft=draft, max_new_tokens=8, temperature=1.0,
                   num_proposals=3, spec_policy="fixed", compare_rule="target_only", seed=3)
    st = out.stats
    assert st["rule"] == "rejection" and st["compare_rule"] == "target_only"
    assert st["tau"] > st["compare_tau"] + 0.05, (st["tau"], st["compare_tau"])
    assert len(st["accept_by_depth"]) == 3 and all(0 <= a <= 1 for a in st["accept_by_depth"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    make_target(d / "t", layers=4, init_range=0.1, seed=3)   # clear logit margins (greedy ties)
    make_draft(d / "d", 32, target_layer_ids=(0, 2))
    target = load_qwen3(str(d / "t"))
    return target, load_draft(str(d / "d"), target)


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("tree", [False, True])
def test_greedy_output_is_target_only_under_every_policy(pair, tree):
    target, draft = pair
    prompts = _prompts(5, [3, 11, 6])
    ref = generate(target, prompts, max_new_tokens=30).tokens
    kw = dict(tree_topk=2, tree_budget=6, tree_as_chain=False) if tree else dict(num_proposals=5)
    cheap = AdaptivePolicy(StepCosts(plain=1.0, draft=0.01, verify_per_token=0.0, frozen=True))
    for policy in ("fixed", "adaptive", cheap, expensive(), Cycle([5, 0, 0, 2, 1, 0, 4])):
        out = generate(target, prompts, draft=draft, max_new_tokens=30, spec_policy=policy, **kw)
        assert out.tokens == ref, policy
    assert set(out.stats["draft_lengths"]) >= ({"0", "6"} if tree else {"0", "1", "2", "4", "5"})


def test_drafting_after_a_plain_run_longer_than_the_feature_queue_is_lossless(pair):
    """More plain steps in a row than the draft's feature queue keeps: the draft resumes with the
    recent context only (positions past the gap), and the output stays target-only greedy."""
    from domino_kernels import decode_step

    target, draft = pair
    prompts = _prompts(12, [4, 7])
    ref = generate(target, prompts, max_new_tokens=100).tokens
    plain_run = [0] * (decode_step.MAX_PENDING + 6)
    out = generate(target, prompts, draft=draft, max_new_tokens=100, spec_policy=Cycle(plain_run + [5, 5, 3]))
    assert out.tokens == ref and out.stats["draft_lengths"]["5"] >= 2


class GappyCycle(Cycle):
    """A cycle whose plain steps queue no features for the draft (as the adaptive policy's plain
    steps far from the next probe): drafts then see the prompt and the drafted steps only."""

    name = "gappy-cycle"

    def queue_context(self, options):
        return False


@pytest.mark.parametrize("tree", [False, True])
def test_drafting_after_plain_steps_that_queued_no_context_is_lossless(pair, tree, monkeypatch):
    """Plain steps that skip the feature capture leave gaps in the draft's context: the draft
    receives exactly the prompt's and the drafted steps' positions, and greedy output stays
    target-only greedy."""
    target, draft = pair
    prompts = _prompts(14, [4, 9])
    ref = generate(target, prompts, max_new_tokens=40).tokens
    appended = []
    append_context = draft.append_context

    def counting(feats, positions, *args, **kwargs):
        appended.append(int(kwargs["commit_lens"].sum()))
        return append_context(feats, positions, *args, **kwargs)

    monkeypatch.setattr(draft, "append_context", counting)
    kw = dict(tree_topk=2, tree_budget=6, tree_as_chain=False) if tree else dict(num_proposals=5)
    out = generate(target, prompts, draft=draft, max_new_tokens=40, spec_policy=GappyCycle([0, 0, 0, 5]),
                   trace=True, **kw)
    assert out.tokens == ref and out.stats["draft_lengths"]["0"] >= 6
    committed = sum(sum(a + 1 for a in r["accepted"]) for r in out.trace if any(r["draft"]))
    assert sum(appended) <= sum(map(len, prompts)) + committed      # no plain step's position
    assert sum(appended) >= sum(map(len, prompts))


def test_a_prompt_that_repeats_itself_is_probed_early_and_stays_lossless(pair):
    """``generate`` watches each request's text (RepeatWatch): a prompt ending in a repeat gets a
    probe after ``REPEAT_WARMUP`` plain steps although the regular schedule would not probe for
    1024 steps; prompts that do not repeat get none. Greedy output stays target-only greedy."""
    from domino_kernels.spec_policy import REPEAT_NGRAM, REPEAT_WARMUP

    target, draft = pair
    x = _prompts(21, [REPEAT_NGRAM])[0]
    plain_prompts = _prompts(22, [5, 9])

    def policy():
        return AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.1, frozen=True), prior=0.05,
                              probe_after=1024)

    for prompts, probed in ((plain_prompts, False), ([plain_prompts[0], x + x], True)):
        ref = generate(target, prompts, max_new_tokens=30).tokens
        out = generate(target, prompts, draft=draft, max_new_tokens=30, spec_policy=policy(), num_proposals=8,
                       trace=True)
        assert out.tokens == ref
        drafted = [i for i, r in enumerate(out.trace) if any(r["draft"])]
        assert (drafted[:1] == [REPEAT_WARMUP]) if probed else drafted == []


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_adaptive_with_expensive_drafts_takes_plain_steps_and_equals_target_only(pair, temperature):
    target, draft = pair
    prompts = _prompts(9, [4, 9])
    kw = dict(max_new_tokens=40, temperature=temperature, top_p=0.9, seed=11)
    ref = generate(target, prompts, **kw)
    out = generate(target, prompts, draft=draft, spec_policy=expensive(), **kw)
    assert out.stats["draft_lengths"] == {"0": out.stats["steps"]}
    assert out.tokens == ref.tokens      # the plain step is the target-only step: same draws


def test_a_request_never_drafted_for_never_runs_the_draft(pair, monkeypatch):
    """The prompt's features wait in the queue for the first drafted step: with drafting too
    expensive even to probe, the draft model is never called (and the output is target-only)."""
    target, draft = pair
    prompts = _prompts(3, [5, 8])
    ref = generate(target, prompts, max_new_tokens=20).tokens

    def boom(*args, **kwargs):
        raise AssertionError("the draft ran although no step drafted")

    for name in ("append_context", "block_forward"):
        monkeypatch.setattr(draft, name, boom)
    out = generate(target, prompts, draft=draft, max_new_tokens=20, spec_policy=expensive())
    assert out.tokens == ref and out.stats["draft_lengths"] == {"0": out.stats["steps"]}


def test_compare_rule_on_greedy_drafts_matches(pair):
    target, draft = pair
    out = generate(target, _prompts(1, [5]), draft=draft, max_new_tokens=20, spec_policy="fixed",
                   compare_rule="greedy")
    assert out.stats["compare_tau"] == out.stats["tau"] and out.stats["rule"] == "greedy"


def test_acceptance_history_shrinks_toward_the_population():
    h = AcceptanceHistory(depth=4, prior=0.9)
    h.start(2)
    fresh = h.expected_tokens([0])
    assert fresh[0] == 1.0 and fresh[4] == pytest.approx(1 + 0.9 + 0.81 + 0.729 + 0.6561)
    for _ in range(30):
        h.observe(0, 4, 0)                    # request 0 never gets a token accepted
        h.observe(1, 4, 4)                    # request 1 always gets all four
    e0, e1 = h.expected_tokens([0]), h.expected_tokens([1])
    assert e0[4] < 1.6 < 4.0 < e1[4]
    h.start(1)                                # a new request starts from the population's estimate
    assert e0[4] < h.expected_tokens([0])[4] < e1[4]


def test_adaptive_policy_explores_then_follows_costs_and_probes_with_backoff():
    p = AdaptivePolicy(probe_after=4, probe_budget=1.0)   # budget: K = max(4, ceil(excess))
    p.start(1, 8)
    options = [(n, n) for n in range(9)]
    assert p.choose([0], options) == (8, 8)      # costs unknown: the longest draft first
    p.observe([0], (8, 8), [0], 3.0, 1.5)
    assert p.choose([0], options) == (0, 0)      # then one plain step
    p.observe([0], (0, 0), [0], 0.0, 1.0)
    assert p.costs.known()
    for _ in range(3):                           # nothing accepted: drafting does not pay
        assert p.choose([0], options) == (0, 0)
        p.observe([0], (0, 0), [0], 0.0, 1.0)
    picks = []
    for _ in range(40):
        option = p.choose([0], options)
        picks.append(option[0])
        p.observe([0], option, [0], 3.0 if option[0] else 0.0, 1.5 if option[0] else 1.0)
    probes = [i for i, n in enumerate(picks) if n]
    assert len(probes) >= 2 and all(b - a >= 4 for a, b in zip(probes, probes[1:]))
    gaps = np.diff(probes)
    assert (gaps[1:] >= gaps[:-1]).all() and gaps[-1] > gaps[0]   # the interval doubles
    # a perfect draft could not beat a plain step at these costs: never probe
    never = AdaptivePolicy(StepCosts(plain=1.0, draft=100.0, verify_per_token=1.0, frozen=True), probe_after=1)
    never.start(1, 8)
    for _ in range(20):
        assert never.choose([0], options) == (0, 0)
        never.observe([0], (0, 0), [0], 0.0, 1.0)


def test_adaptive_policy_drafts_when_acceptance_is_high():
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=1.5, verify_per_token=0.05, frozen=True))
    p.start(1, 8)
    for _ in range(10):
        p.observe([0], (8, 8), [8], 0.0, 0.0)
    assert p.choose([0], [(n, n) for n in range(9)]) == (8, 8)
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=1.5, verify_per_token=0.05, frozen=True))
    p.start(1, 8)
    for _ in range(10):
        p.observe([0], (8, 8), [2], 0.0, 0.0)   # two tokens then a miss, every time
    assert p.choose([0], [(n, n) for n in range(9)]) == (2, 2)   # the third token is never accepted
