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
from dataclasses import dataclass, field
from typing import Optional, Sequence

POLICIES = ("adaptive", "fixed")


@dataclass
class StepCosts:
    """Seconds per decode step of a batch: ``cost(0) = plain`` (one target token per request) and
    ``cost(n) = draft + plain + n * verify_per_token`` for ``n >= 1`` (the draft stage taken as
    independent of ``n``: on both devices it is dominated by the block forward; the verify stage
    grows with the drafted tokens). Unknown entries (None) are measured by the first steps;
    ``frozen`` costs are never updated (tests, reproducible adaptive runs)."""

    plain: Optional[float] = None
    draft: Optional[float] = None
    verify_per_token: Optional[float] = None
    frozen: bool = False
    smoothing: float = 0.2          # weight of a new measurement in the running mean

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
            self.plain = self._mix(self.plain, verify_s)
            return
        self.draft = self._mix(self.draft, draft_s)
        # until a plain step is measured, the n-token verify stands in for it (an upper bound)
        plain = self.plain if self.plain is not None else verify_s
        self.verify_per_token = self._mix(self.verify_per_token, max(verify_s - plain, 0.0) / n)

    def _mix(self, old: Optional[float], new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new


@dataclass
class AcceptanceHistory:
    """Per request and depth, exponentially weighted counts of drafted tokens that reached depth d
    (``trials``) and were accepted (``hits``). Every step multiplies the counts by ``decay``, so
    old evidence fades and a request that stopped drafting is eventually probed again. The
    estimate shrinks toward the previous depth's (depth 1 toward ``prior``) with ``prior_weight``
    pseudo-trials: unobserved depths borrow from the shallower ones."""

    batch: int
    depth: int
    prior: float = 0.9
    prior_weight: float = 1.0
    decay: float = 0.99
    hits: list = field(default_factory=list)
    trials: list = field(default_factory=list)

    def __post_init__(self):
        self.hits = [[0.0] * self.depth for _ in range(self.batch)]
        self.trials = [[0.0] * self.depth for _ in range(self.batch)]

    def observe(self, b: int, drafted: int, accepted: int) -> None:
        h, t = self.hits[b], self.trials[b]
        for d in range(self.depth):
            h[d] *= self.decay
            t[d] *= self.decay
        for d in range(min(accepted + 1, drafted)):   # depths 1..accepted hit, accepted+1 missed
            t[d] += 1.0
            h[d] += 1.0 if d < accepted else 0.0

    def rates(self, b: int) -> list:
        out, prev = [], self.prior
        for h, t in zip(self.hits[b], self.trials[b]):
            prev = (h + self.prior_weight * prev) / (t + self.prior_weight)
            out.append(prev)
        return out

    def expected_tokens(self, b: int, n: int) -> float:
        """1 (the bonus/correction token) + the expected accepted run among ``n`` drafted tokens."""
        total, run = 1.0, 1.0
        for a in self.rates(b)[:n]:
            run *= a
            total += run
        return total


class FixedPolicy:
    """Always the largest draft (today's behaviour; the output depends only on the seed)."""

    name = "fixed"

    def start(self, batch: int, depth: int) -> None:
        pass

    def choose(self, requests: Sequence[int], options: Sequence[tuple]) -> tuple:
        return max(options)

    def observe(self, requests, option, accepted, draft_s, verify_s) -> None:
        pass


class AdaptivePolicy:
    """Maximise expected tokens per second (module docstring). ``costs`` default to measured ones
    (kept by the object: pass the same policy to later calls to reuse them); pass
    ``StepCosts(..., frozen=True)`` to force a cost model."""

    name = "adaptive"

    def __init__(self, costs: Optional[StepCosts] = None, prior: float = 0.9, decay: float = 0.99):
        self.costs = costs if costs is not None else StepCosts()
        self.prior, self.decay = prior, decay
        self.history: Optional[AcceptanceHistory] = None

    def start(self, batch: int, depth: int) -> None:
        self.history = AcceptanceHistory(batch, depth, prior=self.prior, decay=self.decay)

    def choose(self, requests: Sequence[int], options: Sequence[tuple]) -> tuple:
        """``options``: ``(depth, drafted tokens)`` of each candidate draft, ``(0, 0)`` = a plain
        step (a chain of n: ``(n, n)``; a tree: ``(its depth, its nodes)``). Unmeasured costs
        are explored first: the largest draft, then one plain step."""
        c = self.costs
        if c.draft is None or c.verify_per_token is None:
            return max(options)
        if c.plain is None:
            return (0, 0)
        best, best_rate = None, -math.inf
        for depth, tokens in sorted(options):
            rate = sum(self.history.expected_tokens(b, depth) for b in requests) / max(c.cost(tokens), 1e-12)
            if rate > best_rate * (1 + 1e-9):     # ties go to the shorter draft
                best, best_rate = (depth, tokens), rate
        return best

    def observe(self, requests: Sequence[int], option: tuple, accepted: Sequence[int], draft_s: float,
                verify_s: float) -> None:
        for b, a in zip(requests, accepted):
            self.history.observe(b, option[0], a)
        self.costs.observe(option[1], draft_s, verify_s)


def make_policy(spec_policy) -> object:
    """``"adaptive"``, ``"fixed"`` or a policy object (``AdaptivePolicy(costs=...)``)."""
    if isinstance(spec_policy, (AdaptivePolicy, FixedPolicy)):
        return spec_policy
    if spec_policy == "fixed":
        return FixedPolicy()
    if spec_policy == "adaptive":
        return AdaptivePolicy()
    raise ValueError(f"argument 'spec_policy' must be one of {list(POLICIES)} or a policy object, "
                     f"got {spec_policy!r}")
