"""Speculation policies: how many tokens to draft in the next decode step (0 = a plain target step).

``FixedPolicy`` always drafts the full length (reproducible: the output depends only on the seed).
``AdaptivePolicy`` picks the length ``n`` that maximises the batch's expected tokens per second,

    rate(n) = sum_b E_b[tokens | n] / cost(n),    E_b[tokens | n] = 1 + sum_{k=1..n} prod_{d<=k} a_b(d)

with ``a_b(d)`` request b's estimated probability of accepting depth d given depth d-1 was
accepted (its recent per-depth history, :class:`AcceptanceHistory`) and ``cost(n)`` the step cost
of this machine (:class:`StepCosts`: measured online, or given). One length serves the whole
batch because the padded step computes every active row at the batch's width anyway: a shorter
draft for one request would lower its expected tokens without saving time.

Probing (when plain steps are preferred, acceptance is only re-measured by drafting): the probe is
the SHORTEST draft that could beat a plain step if every token were accepted (depths 1..n are
measured by it, deeper ones borrow from the shallower estimates), never a draft when none could;
it is taken after ``K = max(probe_after, ceil(excess / probe_budget))`` plain steps in a row
(re-priced every ``PROBE_RECHECK`` = 8 plain steps, so a plain step never prices every option)
(``excess = cost(probe) / cost(0) - 1``; ``probe_after`` starts at 16 and doubles after every
probe that does not restart drafting, up to 1024). Worst case, when drafting never pays: the probes
add at most ``min(probe_budget, excess / probe_after)`` (0.5 % by default, falling toward
``excess / 1024``) to the time of the plain steps, at the measured costs. The schedule and the
population's acceptance are kept across calls, so short requests do not restart it.

Context: a plain step queues its target features for the draft's context only when a draft may
follow soon (:meth:`AdaptivePolicy.queue_context`: within ``CONTEXT_LEAD`` plain steps of the next
probe, or whenever the policy has not proved that it stays plain); the other plain steps of a long
run are exactly target-only steps, and the probe drafts from the prompt and its recent context.

Repeats: ``generate`` watches each request's text (:class:`RepeatWatch`). When the last
``REPEAT_NGRAM`` = 16 tokens already occurred in it (a greedy decode that loops, a repeated line),
the policy probes after ``REPEAT_WARMUP`` = 8 plain steps that queue their features, instead of
waiting for the schedule, which is spaced for the whole population and can be 1024 steps long:
repeating text is where drafts are accepted. The start of a repeat is reported once, so a loop
costs at most one such probe. Acceptance is estimated per stratum (repeating or not): a loop
accepts at every depth, and pooled with ordinary text it would price every later request's deep
depths from the loop.

Greedy output never depends on the policy (every length is lossless); sampled output has the
target's law under every policy, but the adaptive policy's choices (hence the random draws) depend
on measured timings unless its costs are given and frozen.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

POLICIES = ("adaptive", "fixed")
PROBE_RECHECK = 8   # plain steps between re-evaluations of the next probe (AdaptivePolicy._next_probe)
CONTEXT_LEAD = 32   # plain steps before a planned probe whose features are queued for its draft
REPEAT_NGRAM = 16   # a request whose last 16 tokens already occurred in its text is probed (RepeatWatch)
REPEAT_WARMUP = 8   # plain steps queueing context between a repeat and its probe


@dataclass
class StepCosts:
    """Seconds per decode step of a batch: ``cost(0) = plain`` (one target token per request) and
    ``cost(n) = draft + plain + n * verify_per_token`` for ``n >= 1`` (the draft stage taken as
    independent of ``n``: on both devices it is dominated by the block forward; the verify stage
    grows with the drafted tokens). Unknown entries (None) are measured by the first steps, each
    the median of its last ``window`` measurements (a shared machine's load spikes do not move a
    median); ``frozen`` costs are never updated (tests, reproducible adaptive runs).

    The linear model only extrapolates: a length ``n`` drafted at least ``min_samples`` times
    costs the median of its own measured steps (draft + verify stage), so a length the policy keeps
    choosing is priced by what it really costs (a per-token verify cost estimated from short
    probes can be far off for a long draft, and a draft stage's cost does depend on ``n``)."""

    plain: Optional[float] = None
    draft: Optional[float] = None
    verify_per_token: Optional[float] = None
    frozen: bool = False
    window: int = 15
    min_samples: int = 3
    samples: dict = field(default_factory=lambda: {"plain": [], "draft": [], "verify_per_token": []})
    by_length: dict = field(default_factory=dict)   # n -> recent measured step seconds (n >= 1)
    length_median: dict = field(default_factory=dict)  # n -> median of by_length[n] (kept current)

    def known(self) -> bool:
        return None not in (self.plain, self.draft, self.verify_per_token)

    def cost(self, n: int) -> float:
        if n == 0:
            return self.plain
        fixed, plain_coef = self.drafted(n)
        return fixed + plain_coef * self.plain

    def drafted(self, n: int) -> tuple:
        """``cost(n) = fixed + plain_coef * plain`` for ``n >= 1``: ``(median, 0)`` when ``n`` has
        been measured ``min_samples`` times, else the linear model's ``(draft + n * verify, 1)``."""
        xs = self.by_length.get(n)
        if xs is not None and len(xs) >= self.min_samples:
            return self.length_median[n], 0.0
        return self.draft + n * self.verify_per_token, 1.0

    def observe(self, n: int, draft_s: float, verify_s: float) -> None:
        """Record a measured step: ``verify_s`` is the target forward + verify of ``n + 1`` tokens per
        request (a plain step when ``n == 0``), ``draft_s`` the draft stage (0 for a plain step)."""
        if self.frozen:
            return
        if n == 0:
            self._add("plain", verify_s)
            return
        self._add("draft", draft_s)
        xs = self.by_length.setdefault(n, [])
        self._keep_recent(xs, draft_s + verify_s)
        self.length_median[n] = statistics.median(xs)
        # until a plain step is measured, the n-token verify stands in for it (an upper bound)
        plain = self.plain if self.plain is not None else verify_s
        self._add("verify_per_token", max(verify_s - plain, 0.0) / n)

    def _add(self, name: str, value: float) -> None:
        xs = self.samples[name]
        self._keep_recent(xs, value)
        setattr(self, name, statistics.median(xs))

    def _keep_recent(self, xs: list, value: float) -> None:
        """Append ``value`` to ``xs``, keeping its last ``window`` entries."""
        xs.append(value)
        del xs[:-self.window]


class RepeatWatch:
    """Per request, whether its text (prompt + output) has just started repeating itself: the last
    ``n`` tokens occurred before in it (the longest repeated suffix reached ``n``). That is where a
    draft is most likely to be accepted (a greedy decode that loops accepts nearly every
    proposal), and where the probe schedule, spaced for the population, would come too late for a
    128-token request. :meth:`extend` reports the start of a repeat once: while the text keeps
    repeating (a loop) it stays quiet, a new repeat after a break reports again. One set of
    ``n``-grams per request: O(1) per token."""

    def __init__(self, texts: Sequence[Sequence[int]], n: int = REPEAT_NGRAM):
        self.n = n
        self.seen = [set() for _ in texts]
        self.tail = [[] for _ in texts]
        self.inside = [False] * len(texts)
        for b, text in enumerate(texts):
            self.extend(b, text)

    def extend(self, b: int, tokens: Sequence[int]) -> bool:
        """Append ``tokens`` to request b's text; True if a repeat started within them."""
        seen, tail, started = self.seen[b], self.tail[b], False
        for t in tokens:
            tail.append(t)
            if len(tail) > self.n:
                del tail[0]
            if len(tail) == self.n:
                key = tuple(tail)
                hit = key in seen
                started |= hit and not self.inside[b]
                self.inside[b] = hit
                seen.add(key)
        return started


@dataclass
class AcceptanceHistory:
    """Per-depth acceptance estimates: for each request and depth d, exponentially weighted counts
    of drafted tokens that reached depth d (``trials``) and were accepted (``hits``), shrunk toward
    the population's estimate (all requests this policy has seen, across calls) with
    ``request_weight`` pseudo-trials. The population's estimate at depth d shrinks toward its
    estimate at depth d-1 (depth 1 toward ``prior``) with one pseudo-trial, so unobserved depths
    borrow from shallower ones. A request's counts fade by ``request_decay`` per step (its recent
    history), the population's by ``population_decay`` per observed request-step.

    Two populations (strata): requests whose text is repeating itself (``repeating[b]``, set from
    :class:`RepeatWatch`) and the others. A loop accepts nearly every proposal at every depth, and
    pooled with ordinary text it would make every later request look worth a full draft (its deep
    depths, which ordinary requests rarely reach, would be estimated from the loop)."""

    depth: int
    prior: float = 0.9
    request_weight: float = 2.0
    request_decay: float = 0.95
    population_decay: float = 0.98
    pop_hits: list = field(default_factory=list)     # [stratum][depth]
    pop_trials: list = field(default_factory=list)
    hits: dict = field(default_factory=dict)
    trials: dict = field(default_factory=dict)
    fade: dict = field(default_factory=dict)
    repeating: dict = field(default_factory=dict)    # request -> its stratum (0 or 1)

    def __post_init__(self):
        self.pop_hits = [[0.0] * self.depth for _ in range(2)]
        self.pop_trials = [[0.0] * self.depth for _ in range(2)]

    def start(self, batch: int) -> None:
        """A new set of requests: forget per-request history, keep the populations'."""
        self.hits = {b: [0.0] * self.depth for b in range(batch)}
        self.trials = {b: [0.0] * self.depth for b in range(batch)}
        self.fade = {b: 1.0 for b in range(batch)}   # decay not yet applied to hits/trials[b]
        self.repeating = {b: 0 for b in range(batch)}

    def observe(self, b: int, drafted: int, accepted: int) -> None:
        if drafted == 0:                # a plain step only fades the request's counts: O(1), lazily
            self.fade[b] *= self.request_decay
            return
        f = self.fade[b] * self.request_decay
        self.fade[b] = 1.0
        h, t = self.hits[b], self.trials[b]
        ph, pt = self.pop_hits[self.repeating[b]], self.pop_trials[self.repeating[b]]
        for d in range(self.depth):
            h[d] *= f
            t[d] *= f
            ph[d] *= self.population_decay
            pt[d] *= self.population_decay
        for d in range(min(accepted + 1, drafted)):   # depths 1..accepted hit, accepted+1 missed
            hit = 1.0 if d < accepted else 0.0
            t[d] += 1.0
            h[d] += hit
            pt[d] += 1.0
            ph[d] += hit

    def population_rates(self, stratum: int = 0) -> list:
        out, prev = [], self.prior
        for h, t in zip(self.pop_hits[stratum], self.pop_trials[stratum]):
            prev = (h + prev) / (t + 1.0)
            out.append(prev)
        return out

    def rates(self, b: int, pop: Optional[list] = None) -> list:
        """Request b's per-depth acceptance estimates (its faded counts shrunk toward ``pop``,
        default its stratum's population)."""
        pop = self.population_rates(self.repeating[b]) if pop is None else pop
        w, f = self.request_weight, self.fade[b]
        return [(f * h + w * p) / (f * t + w) for h, t, p in zip(self.hits[b], self.trials[b], pop)]

    def expected_tokens(self, requests: Sequence[int], remaining: Optional[Sequence[int]] = None,
                        upper: bool = False) -> list:
        """``E[n]`` for n = 0..depth, summed over ``requests``: 1 (the bonus/correction token) +
        the expected accepted run among ``n`` drafted tokens, counting only the ``remaining[i]``
        tokens request i may still emit (tokens past its limit are wasted). ``upper``: a bound on
        ``E[n]`` for as long as no drafted step is observed (plain steps only fade a request's
        estimate toward the population's, so each depth's rate stays below the larger of the two)."""
        pops = [self.population_rates(k) for k in range(2)]
        total = [0.0] * (self.depth + 1)
        for i, b in enumerate(requests):
            e, run = 1.0, 1.0
            useful = self.depth if remaining is None else remaining[i] - 1
            total[0] += 1.0
            pop = pops[self.repeating[b]]
            for d, a in enumerate(self.rates(b, pop)):
                if d < useful:
                    run *= max(a, pop[d]) if upper else a
                    e += run
                total[d + 1] += e
        return total


class FixedPolicy:
    """Always the largest draft (today's behaviour; the output depends only on the seed)."""

    name = "fixed"

    def start(self, batch: int, depth: int) -> None:
        pass

    def choose(self, requests: Sequence[int], options: Sequence[tuple], remaining=None) -> tuple:
        return max(options)

    def queue_context(self, options: Sequence[tuple]) -> bool:
        return True

    def observe(self, requests, option, accepted, draft_s, verify_s) -> None:
        pass


class AdaptivePolicy:
    """Maximise expected tokens per second (module docstring). ``costs`` default to measured ones;
    pass ``StepCosts(..., frozen=True)`` to force a cost model. The object keeps its costs, the
    population's acceptance and its probe schedule across calls (``generate`` keeps one per draft
    and configuration), so a drafter that does not pay stops being probed however short the calls.

    Exploration: unmeasured costs first (the largest draft, then one plain step). Then, while the
    policy prefers plain steps, a probe (:meth:`probe_option`: the shortest draft that could beat a
    plain step if every token were accepted; none if no draft could) is taken after
    ``K = max(probe_after, ceil(excess / probe_budget))`` plain steps in a row, ``excess =
    cost(probe) / cost(0) - 1`` the probe's extra cost in plain steps. A probe after which the
    policy still prefers plain steps doubles ``probe_after`` (up to ``max_probe_after``); one that
    restarts drafting resets it. So the probes' extra time is at most
    ``min(probe_budget, excess / probe_after)`` of the plain steps' time between them (at the
    measured costs), and falls with every unsuccessful probe."""

    name = "adaptive"

    def __init__(self, costs: Optional[StepCosts] = None, prior: float = 0.9, probe_after: int = 16,
                 max_probe_after: int = 1024, probe_budget: float = 0.005):
        if not (isinstance(probe_after, int) and 1 <= probe_after <= max_probe_after):
            raise ValueError(f"argument 'probe_after' must be an int in [1, max_probe_after={max_probe_after}], "
                             f"got {probe_after!r}")
        if not (isinstance(probe_budget, (int, float)) and probe_budget > 0 and math.isfinite(probe_budget)):
            raise ValueError(f"argument 'probe_budget' must be a finite number > 0, got {probe_budget!r}")
        self.costs = costs if costs is not None else StepCosts()
        self.prior = prior
        self.probe_after = self.min_probe_after = probe_after
        self.max_probe_after = max_probe_after
        self.probe_budget = float(probe_budget)
        self.history: Optional[AcceptanceHistory] = None
        self.since_draft = 0       # plain steps since the last drafted step (kept across calls)
        self.probing = False
        self._plain_run = None     # (requests, draft, verify_per_token, max plain cost): see _stays_plain
        self._probe = None         # (probe option, its interval, recheck at since_draft): see _next_probe
        self._repeat_at = None     # since_draft at which a repeat's probe is due (note_repeat)

    def start(self, batch: int, depth: int) -> None:
        if self.history is None or self.history.depth != depth:
            self.history = AcceptanceHistory(depth, prior=self.prior)
        self.history.start(batch)
        self._plain_run = self._probe = self._repeat_at = None

    def note_repeat(self, b: int, started: bool, repeating: bool) -> None:
        """Request b's text started repeating itself or stopped (:class:`RepeatWatch`): its
        acceptance is estimated within that stratum (:class:`AcceptanceHistory`), and a repeat
        that starts during plain steps is probed after ``REPEAT_WARMUP`` more plain steps, which
        queue their features for the probe's draft."""
        if self.history.repeating.get(b, 0) != int(repeating):
            self.history.repeating[b] = int(repeating)
            self._plain_run = None                # the estimates moved: re-evaluate
        if started and self._repeat_at is None:
            self._repeat_at = self.since_draft + REPEAT_WARMUP

    def choose(self, requests: Sequence[int], options: Sequence[tuple],
               remaining: Optional[Sequence[int]] = None) -> tuple:
        """``options``: ``(depth, drafted tokens)`` of each candidate draft, ``(0, 0)`` = a plain
        step (a chain of n: ``(n, n)``; a tree: ``(its depth, its nodes)``); ``remaining``: the
        tokens each request may still emit (None: unlimited)."""
        c = self.costs
        if c.draft is None or c.verify_per_token is None:
            return max(options)
        if c.plain is None:
            return (0, 0)
        if self._stays_plain(requests):
            best = (0, 0)
        else:
            best = self._best(requests, options, remaining)
            self._plain_run = self._plain_run_bound(requests, options) if best == (0, 0) else None
        if self.probing:                          # the last step was a probe: did it pay?
            self.probe_after = (self.min_probe_after if best != (0, 0)
                                else min(2 * self.probe_after, self.max_probe_after))
            self.probing = False
        if best != (0, 0):
            return best
        repeat_due = self._repeat_at is not None and self.since_draft >= self._repeat_at
        if self.since_draft < self.probe_after and not repeat_due:
            return best
        if remaining is not None and max(remaining) <= 1:
            return best                           # nothing left a draft could add
        probe, interval = self._next_probe(options)
        if probe is not None and (self.since_draft >= interval or repeat_due):
            self.probing, self._probe = True, None
            return probe
        if repeat_due:
            self._repeat_at = None                # no draft could pay: nothing to probe
        return best

    def queue_context(self, options: Sequence[tuple]) -> bool:
        """Whether the plain step just chosen should queue its target features for the draft.
        False only inside a plain run that :meth:`choose` proved stays plain until the next probe
        when that probe is more than ``CONTEXT_LEAD`` plain steps away (or no draft could pay at
        all): such a step then costs exactly a target-only step (no feature capture, nothing
        queued), and the probe drafts from the prompt and the last ``CONTEXT_LEAD`` positions.
        The gap only approximates the draft (verification stays exact); a draft that comes
        earlier than planned, because the measured costs moved, drafts with the gap too."""
        if self._plain_run is None or self._repeat_at is not None:
            return True
        probe, interval = self._next_probe(options)
        return probe is not None and interval - self.since_draft <= CONTEXT_LEAD

    def _next_probe(self, options: Sequence[tuple]) -> tuple:
        """``(probe_option, probe_interval)``, re-evaluated every ``PROBE_RECHECK`` plain steps
        (and after every drafted step): each evaluation prices every option, tens of microseconds
        that a plain step of a small model would otherwise pay every time (the costs it reads move
        slowly; the interval is at least ``probe_after`` >= 16 steps anyway)."""
        if self._probe is None or self.since_draft >= self._probe[2]:
            probe = self.probe_option(options)
            interval = self.probe_interval(probe) if probe is not None else math.inf
            self._probe = (probe, interval, self.since_draft + PROBE_RECHECK)
        return self._probe[0], self._probe[1]

    def probe_option(self, options: Sequence[tuple]) -> Optional[tuple]:
        """The shortest draft whose perfect outcome (every drafted token accepted: depth + 1
        tokens per request) beats a plain step at the current costs; None if none would."""
        plain_rate = 1.0 / max(self.costs.cost(0), 1e-12)
        for depth, tokens in sorted(options, key=lambda o: (o[1], o[0])):
            if depth > 0 and (depth + 1) / max(self.costs.cost(tokens), 1e-12) > plain_rate:
                return (depth, tokens)
        return None

    def probe_interval(self, probe: tuple) -> int:
        """Plain steps in a row before ``probe`` is taken (class docstring)."""
        excess = self.costs.cost(probe[1]) / max(self.costs.cost(0), 1e-12) - 1.0
        return max(self.probe_after, math.ceil(max(excess, 0.0) / self.probe_budget - 1e-9))  # (rounding)

    def _stays_plain(self, requests) -> bool:
        """True when the last full evaluation chose a plain step and proved it stays the best
        choice until the next drafted step (same requests, draft and verify costs, plain cost at
        most the bound): a plain run then costs the policy O(1) per step."""
        run, c = self._plain_run, self.costs
        return (run is not None and run[0] == requests and run[1] == c.draft and run[2] == c.verify_per_token
                and c.plain <= run[3])

    def _plain_run_bound(self, requests, options) -> tuple:
        """The largest plain cost at which a plain step stays the best choice whatever the
        requests' estimates fade to before the next drafted step: for every draft ``n``,
        ``U(n) * plain <= |requests| * cost(n)`` with ``U(n)`` the bound of
        :meth:`AcceptanceHistory.expected_tokens` (``upper=True``; ``remaining`` only lowers E)."""
        c = self.costs
        upper = self.history.expected_tokens(requests, upper=True)
        bound, r = math.inf, len(requests)
        for depth, tokens in options:
            if depth == 0:
                continue
            # U(n) * plain <= r * (fixed + coef * plain)  <=>  plain * (U(n) - r * coef) <= r * fixed
            fixed, coef = c.drafted(tokens)
            slope = upper[depth] - r * coef
            if slope > 0:
                bound = min(bound, r * fixed / slope)
        return (list(requests), c.draft, c.verify_per_token, bound)

    def _best(self, requests, options, remaining) -> tuple:
        best, best_rate = None, -math.inf
        expected = self.history.expected_tokens(requests, remaining)
        for depth, tokens in sorted(options):
            rate = expected[depth] / max(self.costs.cost(tokens), 1e-12)
            if rate > best_rate * (1 + 1e-9):     # ties go to the shorter draft
                best, best_rate = (depth, tokens), rate
        return best

    def observe(self, requests: Sequence[int], option: tuple, accepted: Sequence[int], draft_s: float,
                verify_s: float) -> None:
        for b, a in zip(requests, accepted):
            self.history.observe(b, option[0], a)
        if option[0]:
            self.since_draft, self._plain_run, self._probe, self._repeat_at = 0, None, None, None
        else:
            self.since_draft += 1
        self.costs.observe(option[1], draft_s, verify_s)


def make_policy(spec_policy, cache: Optional[dict] = None, key=None) -> object:
    """``"adaptive"``, ``"fixed"`` or a policy object (``AdaptivePolicy(costs=...)``). An adaptive
    policy is kept in ``cache[key]`` (its costs and population acceptance carry over)."""
    if isinstance(spec_policy, (AdaptivePolicy, FixedPolicy)):
        return spec_policy
    if spec_policy == "fixed":
        return FixedPolicy()
    if spec_policy == "adaptive":
        if cache is None:
            return AdaptivePolicy()
        return cache.setdefault(key, AdaptivePolicy())
    raise ValueError(f"argument 'spec_policy' must be one of {list(POLICIES)} or a policy object, "
                     f"got {spec_policy!r}")
