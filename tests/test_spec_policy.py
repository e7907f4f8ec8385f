"""The adaptive speculation policy alone (no models): the probe rule and its overhead bound, the
schedule kept across calls, and the O(1) plain-run shortcut agreeing with a full evaluation."""
import math
import random

import pytest

from domino_kernels.spec_policy import (CONTEXT_LEAD, PROBE_RECHECK, REPEAT_WARMUP, AdaptivePolicy, FixedPolicy,
                                       RepeatWatch, StepCosts)

CHAIN = [(n, n) for n in range(9)]


def _run(p, steps, batch=1, accepted=0, calls=1):
    """``calls`` calls of ``steps`` steps each, every drafted token rejected after ``accepted``.
    Returns the global step indices at which the policy drafted, and their lengths."""
    drafted, i = [], 0
    for _ in range(calls):
        p.start(batch, 8)
        for _ in range(steps):
            option = p.choose(list(range(batch)), CHAIN)
            if option[0]:
                drafted.append((i, option[0]))
            p.observe(list(range(batch)), option, [min(accepted, option[0])] * batch, 0.0, 0.0)
            i += 1
    return drafted


def test_probe_is_the_shortest_draft_that_could_pay_and_none_when_none_could():
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.25, frozen=True), probe_budget=0.05)
    # a perfect draft of n tokens gives n + 1 tokens for 4 + 0.25 n: it beats a plain step from n = 5
    assert p.probe_option(CHAIN) == (5, 5)
    assert p.probe_interval((5, 5)) == math.ceil((5.25 - 1.0) / 0.05)        # 85 > probe_after
    never = AdaptivePolicy(StepCosts(plain=1.0, draft=8.0, verify_per_token=0.25, frozen=True))
    assert never.probe_option(CHAIN) is None                              # 9 tokens for 11.0: no
    assert _run(never, 3000) == []
    tree = AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.25, frozen=True))
    assert tree.probe_option([(0, 0), (6, 16)]) is None                  # 7 tokens for 8.0: no
    assert tree.probe_option([(0, 0), (8, 16)]) == (8, 16)                 # 9 tokens for 8.0


@pytest.mark.parametrize("calls,steps", [(1, 6000), (60, 100)])
def test_probes_when_drafting_never_pays_stay_within_the_budget(calls, steps):
    """Nothing is ever accepted: after the exploration the policy drafts only short probes, spaced
    at least ``max(probe_after, excess / budget)`` plain steps apart, the spacing doubling, also
    when the steps come as many short calls (the schedule is kept across calls)."""
    costs = StepCosts(plain=1.0, draft=3.0, verify_per_token=0.25, frozen=True)
    p = AdaptivePolicy(costs, probe_budget=0.05)
    drafted = _run(p, steps, calls=calls)
    assert drafted[0] == (0, 8)               # the optimistic prior (0.9) drafts once, fully
    assert len(drafted) > 3 and all(n == 5 for _, n in drafted[1:])
    gaps = [b - a for (a, _), (b, _) in zip(drafted, drafted[1:])]
    assert all(g >= 86 for g in gaps)                     # 85 plain steps, then the probe
    assert all(b >= a for a, b in zip(gaps, gaps[1:]))    # never shorter again
    excess = costs.cost(5) / costs.cost(0) - 1.0
    extra = excess * len(drafted)                         # the probes' time beyond plain steps
    assert extra <= 0.05 * (calls * steps - len(drafted)) + excess   # the budget (+ the first probe)
    # backoff: 16 doubles to 1024 within 6 probes; from then on 1024 plain steps between probes
    assert gaps[-1] >= 1024 if len(gaps) > 7 else gaps[-1] >= 86


def test_a_probe_that_pays_restarts_drafting_and_resets_the_interval():
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=1.0, verify_per_token=0.1, frozen=True), prior=0.05,
                       probe_budget=0.05)
    # probe: 2 tokens (3 for 2.2 beats a plain step), after max(16, ceil(1.2 / 0.05)) = 24 plain steps
    assert p.probe_option(CHAIN) == (2, 2) and p.probe_interval((2, 2)) == 24
    p.start(1, 8)
    picks = []
    for _ in range(200):
        option = p.choose([0], CHAIN)
        picks.append(option[0])
        good = len(picks) > 24                  # from the first probe on every token is accepted
        p.observe([0], option, [option[0] if good else 0], 0.0, 0.0)
    first = next(i for i, n in enumerate(picks) if n)
    assert first == 24 and picks[first] == 2 and all(picks[first + 1:]) and p.probe_after == p.min_probe_after


@pytest.mark.parametrize("seed", range(4))
def test_the_plain_run_shortcut_agrees_with_a_full_evaluation(seed):
    """Random histories and measured (moving) plain costs: whenever the shortcut answers "plain",
    the full expected-rate comparison answers the same."""
    rng = random.Random(seed)
    p = AdaptivePolicy(StepCosts(window=3), probe_after=10 ** 6, max_probe_after=10 ** 6)
    batch = 3
    p.start(batch, 8)
    p.observe([0, 1, 2], (8, 8), [0, 0, 0], 3.0, 1.5)            # calibrate draft / verify costs
    p.observe([0, 1, 2], (0, 0), [0, 0, 0], 0.0, 1.0)            # and the plain step
    shortcuts = 0
    for step in range(600):
        active = [b for b in range(batch) if step < 500 or b != 1]    # a request finishes
        remaining = [rng.randint(1, 40) for _ in active]
        shortcut = p._stays_plain(active)
        option = p.choose(active, CHAIN, remaining)
        full = p._best(active, CHAIN, remaining)
        assert option == full, (step, option, full)
        shortcuts += shortcut
        if option[0]:
            acc = [rng.choice([0, 0, 1, option[0]]) for _ in active]
            p.observe(active, option, acc, 3.0 * rng.uniform(0.5, 2), 1.5 * rng.uniform(0.5, 2))
        else:
            p.observe(active, option, [0] * len(active), 0.0, rng.uniform(0.2, 2.0))
    assert shortcuts > 100


def test_a_length_drafted_often_is_priced_by_its_own_measured_steps():
    c = StepCosts(min_samples=3)
    c.observe(0, 0.0, 1.0)                                       # plain: 1
    c.observe(1, 2.0, 1.1)                                       # a 1-token probe: draft 2, verify +0.1
    assert c.cost(8) == pytest.approx(2.0 + 1.0 + 8 * 0.1)       # extrapolated: 3.8
    for _ in range(2):
        c.observe(8, 2.5, 6.0)
    assert c.drafted(8)[1] == 1.0                                # 2 samples: still the linear model
    c.observe(8, 2.5, 6.0)
    assert c.drafted(8) == (8.5, 0.0) and c.cost(8) == 8.5       # 3 samples: their median
    assert c.drafted(4)[1] == 1.0                                # other lengths still extrapolate
    frozen = StepCosts(plain=1.0, draft=2.0, verify_per_token=0.1, frozen=True)
    for _ in range(5):
        frozen.observe(8, 2.5, 6.0)
    assert frozen.cost(8) == pytest.approx(3.8)                  # frozen costs never move


def test_the_policy_stops_drafting_a_length_that_costs_more_than_modelled():
    """Ten 1-token probes (draft stage 2, verify +0.1 per token) make the linear model price an
    8-token draft at 3.8 plain steps; the 8-token steps really cost 7.8 (their draft stage is
    dearer). With ~5 tokens per 8-token step the model says draft (5 / 3.8 > 1), the truth says
    plain (5 / 7.8 < 1): once three 8-token steps are measured the policy takes plain steps,
    where the linear model alone (medians dominated by the probes) would keep drafting."""
    def run(min_samples):
        p = AdaptivePolicy(StepCosts(min_samples=min_samples), probe_after=10 ** 6, max_probe_after=10 ** 6)
        p.start(1, 8)
        p.observe([0], (0, 0), [0], 0.0, 1.0)
        for _ in range(10):
            p.observe([0], (1, 1), [1], 2.0, 1.1)
        chose = []
        for _ in range(12):
            option = p.choose([0], [(0, 0), (1, 1), (8, 8)])
            chose.append(option[0])
            if option[0] == 8:
                p.observe([0], option, [4], 6.0, 1.8)
            elif option[0]:
                p.observe([0], option, [1], 2.0, 1.1)
            else:
                p.observe([0], option, [0], 0.0, 1.0)
        return chose
    measured = run(3)
    assert measured[:3] == [8, 8, 8] and measured[3:] == [0] * 9, measured
    assert run(10 ** 6).count(8) >= 8          # the linear model alone keeps paying for it


def test_bad_probe_arguments_name_the_argument():
    with pytest.raises(ValueError, match="probe_after"):
        AdaptivePolicy(probe_after=0)
    with pytest.raises(ValueError, match="probe_budget"):
        AdaptivePolicy(probe_budget=float("nan"))


def test_a_plain_run_prices_the_probe_once_per_recheck_interval():
    """During a long plain run the next probe (which prices every option: tens of microseconds with
    measured costs) is re-evaluated once per ``PROBE_RECHECK`` plain steps, not every step, and the
    probe is still taken once its interval has passed."""
    costs = StepCosts()
    costs.observe(0, 0.0, 1.0)
    for n in range(1, 9):
        for _ in range(3):
            costs.observe(n, 3.0 + 0.1 * n, 1.2)          # every length measured: cost(n) ~ 4.2 + 0.1 n
    p = AdaptivePolicy(costs, probe_budget=0.05)
    p.start(1, 8)
    p.history.observe(0, 8, 0)                            # nothing accepted: plain steps are best
    calls = []
    probe_option = p.probe_option
    p.probe_option = lambda options: calls.append(1) or probe_option(options)
    picks = []
    for _ in range(400):
        option = p.choose([0], CHAIN, [1000])
        picks.append(option[0])
        p.observe([0], option, [0], 3.0 if option[0] else 0.0, 1.2 if option[0] else 1.0)
    first = next(i for i, n in enumerate(picks) if n)
    probe = picks[first]
    interval = math.ceil((costs.cost(probe) - 1.0) / 0.05)
    assert interval <= first <= interval + PROBE_RECHECK
    assert len(calls) <= 400 // PROBE_RECHECK + 2 * picks.count(probe) + 2


def test_plain_steps_queue_context_only_within_the_lead_of_the_next_probe():
    """In a plain run the policy proved stays plain, a plain step's features are queued for the
    draft only when it is one of the last ``CONTEXT_LEAD`` plain steps before the next probe;
    with no probe planned (no draft could pay) never; outside a proven plain run always."""
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.25, frozen=True), probe_budget=0.05)
    p.start(1, 8)
    queued, picks = [], []
    for _ in range(1000):
        option = p.choose([0], CHAIN)
        picks.append(option[0])
        queued.append(p.queue_context(CHAIN) if option[0] == 0 else None)
        p.observe([0], option, [0], 0.0, 0.0)
    drafted = [i for i, n in enumerate(picks) if n]
    assert len(drafted) >= 3 and drafted[0] == 0
    for a, b in zip(drafted, drafted[1:]):
        assert b - a - 1 > CONTEXT_LEAD                        # 85+ plain steps between probes
        assert queued[a + 1:b] == [False] * (b - a - 1 - CONTEXT_LEAD) + [True] * CONTEXT_LEAD
    assert sum(q is False for q in queued) > 0.5 * len(queued)
    never = AdaptivePolicy(StepCosts(plain=1.0, draft=8.0, verify_per_token=0.25, frozen=True))
    never.start(1, 8)
    flags = []
    for _ in range(200):
        option = never.choose([0], CHAIN)
        if option[0] == 0:
            flags.append(never.queue_context(CHAIN))
        never.observe([0], option, [0], 0.0, 0.0)
    assert len(flags) == 200 and not any(flags)
    assert AdaptivePolicy().queue_context(CHAIN) and FixedPolicy().queue_context(CHAIN)   # nothing proven


def test_repeat_watch_reports_the_start_of_each_repeat_once():
    text = list(range(20))
    w = RepeatWatch([text[:5]], n=4)
    assert not w.extend(0, text[5:20]) and not w.inside[0]          # no 4-gram twice
    assert not w.extend(0, [0, 1, 2])                               # a 3-token echo is not enough
    assert w.extend(0, [3]) and w.inside[0]                         # 0 1 2 3 again: a repeat starts
    assert not w.extend(0, [4, 5, 6]) and w.inside[0]               # the loop goes on: reported once
    assert not w.extend(0, [99]) and not w.inside[0]                # broken
    assert w.extend(0, [7, 8, 9, 10, 11]) and w.inside[0]           # repeats again: reported again
    prompt = [5, 6, 7, 8, 5, 6, 7, 8]
    assert RepeatWatch([prompt], n=4).inside[0]                     # a prompt that ends repeating
    assert RepeatWatch([prompt[:7]], n=4).inside[0] is False


def test_a_repeat_is_probed_after_the_warmup_and_loops_do_not_move_the_other_population():
    """A request whose text starts repeating is probed after ``REPEAT_WARMUP`` plain steps (which
    queue their features), long before the regular schedule; its drafted steps update the
    repeating stratum's population only."""
    p = AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.1, frozen=True), prior=0.05,
                       probe_after=1024)
    p.start(2, 8)
    picks, queued = [], []
    for step in range(40):
        if step == 5:
            p.note_repeat(1, True, True)
        option = p.choose([0, 1], CHAIN)
        picks.append(option[0])
        queued.append(p.queue_context(CHAIN) if option[0] == 0 else None)
        p.observe([0, 1], option, [0, option[0]], 0.0, 0.0)   # request 1 (the loop) accepts everything
    first = picks.index(next(n for n in picks if n))
    assert first == 5 + REPEAT_WARMUP and picks[first] == 4      # the shortest draft that could pay
    assert queued[5:first] == [True] * REPEAT_WARMUP and queued[first - REPEAT_WARMUP - 1] is False
    pop0, pop1 = p.history.population_rates(0), p.history.population_rates(1)
    assert pop1[0] > 0.5 and pop0[0] < 0.1                        # request 0 stayed in stratum 0
    never = AdaptivePolicy(StepCosts(plain=1.0, draft=3.0, verify_per_token=0.1, frozen=True), prior=0.05,
                           probe_after=1024)
    never.start(2, 8)
    for _ in range(40):                                          # no repeat: no probe
        option = never.choose([0, 1], CHAIN)
        assert option == (0, 0)
        never.observe([0, 1], option, [0, 0], 0.0, 0.0)
