"""Speculation policies: how many tokens to draft in the next decode step (0 = a plain target step).

``FixedPolicy`` always drafts the full length (reproducible: the output depends only on the seed).
``AdaptivePolicy`` picks the length ``n`` that maximises the batch's expected tokens per second,

    rate(n) = sum_b E_b[tokens | n] / cost(n),    E_b[tokens | n] = 1 + sum_{k=1..n} prod_{d<=k} a_b(d)

with ``a_b(d)`` request b's estimated probability of accepting depth d given depth d-1 was
accepted (its recent per-depth history, :class:`AcceptanceHistory`) and ``cost(n)`` the step cost
of this machine (:class:`StepCosts`: measured online, or given). One length serves the whole
batch because the padded step computes every active row at the batch's width anyway: a shorter
draft for one request would lower its expected tokens without saving time.

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


@dataclass
class StepCosts:
    """Seconds per decode step of a batch: ``cost(0) = plain`` (one target token per request) and
    ``cost(n) = draft + plain + n * verify_per_token`` for ``n >= 1`` (the draft stage taken as
    independent of ``n``: on both devices it is dominated by the block forward; the verify stage
    grows with the drafted tokens). Unknown entries (None) are measured by the first steps, each
    the median of its last ``window`` measurements (a shared machine's load spikes do not move a
    median); ``frozen`` costs are never updated (tests, reproducible adaptive runs)."""

    plain: Optional[float] = None
    draft: Optional[float] = None
    verify_per_token: Optional[float] = None
    frozen: bool = False
    window: int = 15
    samples: dict = field(default_factory=lambda: {"plain": [], "draft": [], "verify_per_token": []})

    def known(self) -> bool:
        return None not in (self.plain, self.draft, self.verify_per_token)

    def cost(self, n: int) -> float:
        if n == 0:
            return self.plain
        return self.draft + self.plain + n * self.verify_per_token

    def observe(self, n: int, draft_s: float, verify_s: float) -> None:
        """Record a measured step: ``verify_s`` is the target forward + verify of ``n + 1`` tokens per
        request (a plain step when ``n == 0``), ``draft_s`` the draft stage (0 for a plain step)."""
        if self.frozen:
            return
        if n == 0:
            self._add("plain", verify_s)
            return
        self._add("draft", draft_s)
        # until a plain step is measured, the n-token verify stands in for it (an upper bound)
        plain = self.plain if self.plain is not None else verify_s
        self._add("verify_per_token", max(verify_s - plain, 0.0) / n)

    def _add(self, name: str, value: float) -> None:
        xs = self.samples[name]
        xs.append(value)
        del xs[:-self.window]
        setattr(self, name, statistics.median(xs))


@dataclass
class AcceptanceHistory:
    """Per-depth acceptance estimates: for each request and depth d, exponentially weighted counts
    of drafted tokens that reached depth d (``trials``) and were accepted (``hits``), shrunk toward
    the population's estimate (all requests this policy has seen, across calls) with
    ``request_weight`` pseudo-trials. The population's estimate at depth d shrinks toward its
    estimate at depth d-1 (depth 1 toward ``prior``) with one pseudo-trial, so unobserved depths
    borrow from shallower ones. A request's counts fade by ``request_decay`` per step (its recent
    history), the population's by ``population_decay`` per observed request-step."""

    depth: int
    prior: float = 0.9
    request_weight: float = 2.0
    request_decay: float = 0.95
    population_decay: float = 0.98
    pop_hits: list = field(default_factory=list)
    pop_trials: list = field(default_factory=list)
    hits: dict = field(default_factory=dict)
    trials: dict = field(default_factory=dict)

    def __post_init__(self):
        self.pop_hits = [0.0] * self.depth
        self.pop_trials = [0.0] * self.depth

    def start(self, batch: int) -> None:
        """A new set of requests: forget per-request history, keep the population's."""
        self.hits = {b: [0.0] * self.depth for b in range(batch)}
        self.trials = {b: [0.0] * self.depth for b in range(batch)}

    def observe(self, b: int, drafted: int, accepted: int) -> None:
        h, t = self.hits[b], self.trials[b]
        for d in range(self.depth):
            h[d] *= self.request_decay
            t[d] *= self.request_decay
        if drafted == 0:
            return
        for d in range(self.depth):
            self.pop_hits[d] *= self.population_decay
            self.pop_trials[d] *= self.population_decay
        for d in range(min(accepted + 1, drafted)):   # depths 1..accepted hit, accepted+1 missed
            hit = 1.0 if d < accepted else 0.0
            t[d] += 1.0
            h[d] += hit
            self.pop_trials[d] += 1.0
            self.pop_hits[d] += hit

    def population_rates(self) -> list:
        out, prev = [], self.prior
        for h, t in zip(self.pop_hits, self.pop_trials):
            prev = (h + prev) / (t + 1.0)
            out.append(prev)
        return out

    def expected_tokens(self, requests: Sequence[int], remaining: Optional[Sequence[int]] = None) -> list:
        """``E[n]`` for n = 0..depth, summed over ``requests``: 1 (the bonus/correction token) +
        the expected accepted run among ``n`` drafted tokens, counting only the ``remaining[i]``
        tokens request i may still emit (tokens past its limit are wasted)."""
        pop = self.population_rates()
        w = self.request_weight
        total = [0.0] * (self.depth + 1)
        for i, b in enumerate(requests):
            e, run = 1.0, 1.0
            useful = self.depth if remaining is None else remaining[i] - 1
            total[0] += 1.0
            for d, (h, t, p) in enumerate(zip(self.hits[b], self.trials[b], pop)):
                if d < useful:
                    run *= (h + w * p) / (t + w)
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

    def observe(self, requests, option, accepted, draft_s, verify_s) -> None:
        pass


class AdaptivePolicy:
    """Maximise expected tokens per second (module docstring). ``costs`` default to measured ones;
    pass ``StepCosts(..., frozen=True)`` to force a cost model. The object keeps its costs and the
    population's acceptance across calls (``generate`` keeps one per draft and configuration).

    Exploration: unmeasured costs first (the largest draft, then one plain step). A request that
    has not drafted for ``probe_after`` steps is probed with the largest draft; each probe after
    which the policy still prefers plain steps doubles the interval (up to ``max_probe_after``),
    a probe that restarts drafting resets it. No probe happens when even a perfect draft (every
    token accepted) could not beat a plain step at the current costs."""

    name = "adaptive"

    def __init__(self, costs: Optional[StepCosts] = None, prior: float = 0.9, probe_after: int = 16,
                 max_probe_after: int = 1024):
        self.costs = costs if costs is not None else StepCosts()
        self.prior = prior
        self.probe_after = self.min_probe_after = probe_after
        self.max_probe_after = max_probe_after
        self.history: Optional[AcceptanceHistory] = None
        self.idle: dict = {}
        self.probing = False

    def start(self, batch: int, depth: int) -> None:
        if self.history is None or self.history.depth != depth:
            self.history = AcceptanceHistory(depth, prior=self.prior)
        self.history.start(batch)
        self.idle = {b: 0 for b in range(batch)}

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
        best = self._best(requests, options, remaining)
        if self.probing:                          # the last step was a probe: did it pay?
            self.probe_after = (self.min_probe_after if best != (0, 0)
                                else min(2 * self.probe_after, self.max_probe_after))
            self.probing = False
        worth = remaining is None or max(remaining) > 1
        if best == (0, 0) and worth and max(self.idle[b] for b in requests) >= self.probe_after:
            longest = max(options)
            perfect = len(requests) * (longest[0] + 1) / c.cost(longest[1])
            if perfect > len(requests) / c.cost(0):
                self.probing = True
                return longest
        return best

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
            self.idle[b] = 0 if option[0] else self.idle[b] + 1
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
