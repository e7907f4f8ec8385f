"""generate(): batched Domino speculative decoding (spec §4.1) and plain target-only decoding.

The loop (gpt-fast's ``speculative_decode``, batched): each step the policy picks a draft length
``n`` for the active requests; ``n = 0`` is a plain target step, otherwise

    draft  = draft_chain(state, n) / draft_tree(state, ...)   # drafted tokens (+ the q they came from)
    result = verify(state, draft)                              # target forward + lossless verify
    (accept_len, emitted) -> host                              # the step's one device->host read
    accept(state, draft, result)                               # commit, compact KV, next anchor

over one :class:`~domino_kernels.decode_step.DecodeState` (stages and their device-side index
derivation: ``decode_step.py``; policies: ``spec_policy.py``; rules and costs: docs/decode.md).
Verification: greedy at T = 0; at T > 0 sampled chains by rejection with their q rows
(Leviathan/Chen), sampled trees by rejection without replacement (RSD) with theirs, greedy drafts
(a draft temperature of 0) by the target-only rule. On CUDA, timing adds a sync between draft and verify.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from . import ops as kernels
from .decode_step import (DecodeState, Sampling, accept, draft_chain, draft_tree, drafting_model, plain_step,
                          push_prompt_context, verify, verify_logits, verify_rule)
from .model.dflash import DraftModel
from .model.qwen3 import Qwen3
from .spec_policy import AdaptivePolicy, RepeatWatch, make_policy
from .ops.verify import RULES


class StepSpan(NamedTuple):
    """What one step appended to one request's output: ``emitted`` tokens, of which the first
    ``min(accepted, emitted)`` are draft tokens the target accepted and the rest (at most one) is
    the target's own token (the bonus token after a fully accepted draft, else the correction).
    ``depth``: the most draft tokens the step could accept (the chain length or the tree's depth;
    0 for the prefill's first token and for plain target steps). ``accepted``: the verifier's
    accepted length, counted before the stop rules, so ``emitted < accepted + 1`` only at the
    request's stop token or ``max_new_tokens``."""

    depth: int
    accepted: int
    emitted: int


@dataclass
class GenerateResult:
    """``tokens``: per request, the generated ids (prompt excluded). ``stats``: the run's counters
    and timings (``tau``, ``accept_hist``, ``tokens_per_s``, ...). ``trace`` (``trace=True`` only):
    per decode step the requests, drafts, parents (trees) and accepted lengths. ``spans``: per
    request, one :class:`StepSpan` per step it took part in, the prefill's first token first
    (``StepSpan(0, 0, 1)``); the spans partition its output in order (``sum(emitted) ==
    len(tokens[b])``), and over the spans with ``depth > 0`` the mean of ``accepted + 1`` is
    ``stats["tau"]`` (for a batch, over all requests' drafted spans). Recorded from the host values
    the loop reads anyway (no extra device sync)."""

    tokens: list
    stats: dict
    trace: Optional[list] = None
    spans: list = field(default_factory=list)


@dataclass
class _Outputs:
    """Per-request output lists with the stop-token and max-new-tokens rules applied."""

    max_new: int
    stop: set
    tokens: list = field(default_factory=list)
    done: list = field(default_factory=list)

    def emit(self, b: int, ids: Sequence[int]) -> int:
        """Append ``ids`` to request b's output until it is done; returns how many were appended."""
        out = self.tokens[b]
        n = len(out)
        for t in ids:
            if self.done[b]:
                break
            out.append(int(t))
            if len(out) >= self.max_new or int(t) in self.stop:
                self.done[b] = True
        return len(out) - n


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_prompts(prompts, target: Qwen3, max_new_tokens: int) -> list:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"argument 'max_new_tokens' must be a non-negative int, got {max_new_tokens!r}")
    if len(prompts) == 0:
        raise ValueError("argument 'prompts' is empty: pass at least one prompt")
    cfg = target.cfg
    checked = []
    for i, p in enumerate(prompts):
        ids = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token")
        bad = [t for t in ids if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})")
        if len(ids) + max_new_tokens > cfg.max_position_embeddings:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it "
                             f"exceeds the model's max_position_embeddings={cfg.max_position_embeddings}")
        checked.append([int(t) for t in ids])
    return checked


def _check_sampling(temperature, top_k, top_p, draft_temperature) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"argument 'temperature' must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"argument 'top_p' must be in (0, 1], got {top_p!r}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"argument 'top_k' must be an int >= 0, got {top_k!r}")
    if draft_temperature is not None and not (isinstance(draft_temperature, (int, float))
                                              and math.isfinite(draft_temperature) and draft_temperature >= 0):
        raise ValueError(f"argument 'draft_temperature' must be a finite number >= 0 (or None: the target's "
                         f"temperature), got {draft_temperature!r}")


def generate(target: Qwen3, prompts, *, draft: Optional[DraftModel] = None, max_new_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Optional[Sequence[int]] = None, ignore_eos: bool = False,
             num_proposals: Optional[int] = None, tree_topk: int = 0, tree_budget: int = 0,
             use_head: bool = True, trace: bool = False,
             on_step: Optional[Callable[[int, int], None]] = None, spec_policy="adaptive",
             draft_temperature: Optional[float] = None, compare_rule: Optional[str] = None,
             tree_as_chain: bool = True) -> GenerateResult:
    """Decode ``prompts`` (lists of token ids, any lengths) with ``target``, speculatively when a
    ``draft`` is given. Greedy at ``temperature=0`` (output equals target-only greedy decoding),
    else sampling with top-k / top-p, reproducible from ``seed``. ``tree_topk > 0`` and
    ``tree_budget > 0`` draft a tree of ``tree_budget`` nodes instead of a chain. ``use_head=False``
    runs a Domino draft as plain DFlash. Stops a request at a stop token (included in its output)
    or after ``max_new_tokens``. ``on_step(step, total_new_tokens)`` is called after every step.

    ``spec_policy``: ``"adaptive"`` (default: per step, the draft length with the most expected
    tokens per second, 0 = a plain target step), ``"fixed"`` (always the full draft) or a policy
    object (``spec_policy.AdaptivePolicy(costs=StepCosts(...))``). ``draft_temperature``: the
    temperature drafts are sampled at when ``temperature > 0`` (default: ``temperature``; 0 drafts
    greedily and verifies by the target-only rule). ``compare_rule``: statistics only, also verify
    every drafted step's drafts with this rule (its result is discarded; ``stats["compare_tau"]``).
    ``tree_as_chain``: a tree whose budget fits the block's depth is, by the spine rule, exactly the
    chain of ``tree_budget`` proposals, and is drafted as that chain (cheaper; ``False`` runs the
    tree kernels anyway, e.g. to test them)."""
    prompts = _check_prompts(prompts, target, max_new_tokens)
    _check_sampling(temperature, top_k, top_p, draft_temperature)
    policy = make_policy(spec_policy, cache=None)  # validates the name; the draft's own copy below
    if compare_rule is not None and compare_rule not in RULES:
        raise ValueError(f"argument 'compare_rule' must be one of {sorted(RULES)} or None, got {compare_rule!r}")
    if tree_topk < 0 or tree_budget < 0 or (tree_topk > 0) != (tree_budget > 0):
        raise ValueError(f"tree drafting needs both 'tree_topk' and 'tree_budget' > 0 (chain: both 0), "
                         f"got tree_topk={tree_topk}, tree_budget={tree_budget}")
    dev = target.device
    bsz = len(prompts)
    stop = set() if ignore_eos else set(target.cfg.eos_token_ids if stop_ids is None else stop_ids)
    outs = _Outputs(max_new_tokens, stop, [[] for _ in prompts], [max_new_tokens == 0] * bsz)
    spans = [[] for _ in prompts]
    stats = {"requests": bsz, "steps": 0, "new_tokens": 0, "prefill_s": 0.0, "draft_s": 0.0,
             "verify_s": 0.0, "bookkeeping_s": 0.0, "mode": "target-only"}
    if max_new_tokens == 0:
        return _finish(outs, stats, [], spans, 0.0)

    spec = draft is not None
    tree = spec and tree_topk > 0
    greedy = temperature == 0
    d_temp = float(temperature if draft_temperature is None else draft_temperature)
    sampled = spec and not greedy and d_temp > 0
    as_chain = False
    if spec:
        n_prop = num_proposals or draft.max_proposals()
        if not 1 <= n_prop <= draft.max_proposals():
            raise ValueError(f"argument 'num_proposals' must be in [1, {draft.max_proposals()}], got {n_prop}")
        if tree and tree_as_chain and tree_budget <= draft.max_proposals():
            # The tree pins its spine (the rank-0 path: the chain) before any other node, so a
            # budget the block's depth can hold is spent on the spine alone: the tree IS the chain
            # of `tree_budget` proposals (same tokens at T = 0, same law at T > 0; docs/rollout.md).
            # Draft it as that chain: no beam rows in the rollout, a causal verify, and the policy
            # may pick any shorter length.
            tree, as_chain, n_prop = False, True, tree_budget
        depth = min(tree_budget, draft.max_proposals()) if tree else n_prop
        options = [(0, 0), (depth, tree_budget)] if tree else [(n, n) for n in range(n_prop + 1)]
        width = 1 + (tree_budget if tree else n_prop)
        if use_head and draft.head is not None:
            if dev.type == "cuda":
                draft.use_gru_table(target)  # built once per draft, kept for later calls
            else:
                draft.use_packed_w2()  # likewise (a no-op without AVX512_BF16 or a bf16 head)
        stats["mode"] = ("tree" if tree else "chain") + (" domino" if use_head and draft.head is not None
                                                         else " dflash")
        stats["rule"] = verify_rule(tree, sampled, greedy)
        stats["tree_as_chain"] = as_chain
        key = (bsz, tree_topk, tree_budget, n_prop, use_head, float(temperature), top_k, float(top_p), d_temp,
               str(dev))
        policy = make_policy(spec_policy, cache=draft.policies, key=key)
        stats["spec_policy"] = policy.name
        policy.start(bsz, depth)
    else:
        width = 1
    capacity = max(len(p) for p in prompts) + max_new_tokens + width + 1
    per_row = lambda v, dt: torch.full((bsz,), v, dtype=dt, device=dev)  # noqa: E731
    sampling = Sampling(per_row(float(temperature), torch.float32), per_row(int(top_k), torch.int64),
                        per_row(float(top_p), torch.float32), per_row(d_temp, torch.float32),
                        (int(seed) << 20) + torch.arange(bsz, dtype=torch.int64, device=dev),
                        torch.zeros(bsz, dtype=torch.int64, device=dev))   # one Philox offset per step
    state = DecodeState(target, target.new_cache(bsz, capacity), torch.zeros(bsz, dtype=torch.int64, device=dev),
                        sampling, greedy=greedy)
    if spec:
        state.draft = drafting_model(draft, use_head)
        state.draft_cache = draft.new_cache(bsz, capacity + max(width, draft.cfg.block_size))
    target.capture_layers = list(draft.cfg.target_layer_ids) if spec else []
    if spec:
        target.last_layer_feature = draft.cfg.last_layer_feature
    t0 = time.perf_counter()
    _prefill(state, prompts, outs, spans)
    _sync(dev)
    stats["prefill_s"] = time.perf_counter() - t0

    # the adaptive policy probes a request whose text starts repeating itself (RepeatWatch)
    watch = RepeatWatch(prompts) if spec and isinstance(policy, AdaptivePolicy) else None
    if watch is not None:
        for b in range(bsz):
            policy.note_repeat(b, watch.inside[b], watch.inside[b])   # a prompt that ends repeating
    hist = [0] * (width if spec else 1)
    depth_hits, depth_trials, lengths, compare = [0] * (width - 1), [0] * (width - 1), {}, [0, 0]
    records = [] if trace else None
    while not all(outs.done):
        state.set_active([b for b in range(bsz) if not outs.done[b]])
        sampling.offset += 1
        option = (policy.choose(state.active, options, [max_new_tokens - len(outs.tokens[b]) for b in state.active])
                  if spec else (0, 0))
        lengths[option[1]] = lengths.get(option[1], 0) + 1
        ta = time.perf_counter()
        if option == (0, 0):
            queue = policy.queue_context(options) if spec else False
            nxt = plain_step(state, queue).tolist()                 # the step's one read
            tb = ta
            tc = time.perf_counter()
            acc = [0] * len(nxt)
            for b, t in zip(state.active, nxt):
                spans[b].append(StepSpan(0, 0, outs.emit(b, [t])))
                if watch is not None:
                    _watch_text(watch, policy, b, [t])
            if records is not None:
                records.append({"requests": list(state.active), "draft": [[] for _ in nxt], "accepted": acc})
        else:
            d = draft_tree(state, tree_topk, tree_budget, sampled) if tree else draft_chain(state, option[0], sampled)
            _sync(dev)
            tb = time.perf_counter()
            v = verify(state, d)
            host = torch.cat([v.accept_len[:, None], v.emitted], dim=1).tolist()   # the step's one read
            tc = time.perf_counter()
            acc = [h[0] for h in host]
            if min(acc) < 0:
                raise RuntimeError("verify rejected a request as invalid (accept_len = -1)")
            if compare_rule is not None:
                _compare(state, d, v, compare_rule, compare)
            accept(state, d, v)
            for i, b in enumerate(state.active):
                a = acc[i]
                hist[a] += 1
                for k in range(min(a + 1, option[0])):
                    depth_trials[k] += 1
                    depth_hits[k] += k < a
                spans[b].append(StepSpan(option[0], a, outs.emit(b, host[i][1:a + 2])))
                if watch is not None:
                    _watch_text(watch, policy, b, host[i][1:a + 2])
            if records is not None:
                records.append(_record(state, d, acc))
        td = time.perf_counter()
        if spec:
            policy.observe(state.active, option, acc, tb - ta, tc - tb)
        stats["draft_s"] += tb - ta
        stats["verify_s"] += tc - tb
        stats["bookkeeping_s"] += td - tc
        stats["steps"] += 1
        if on_step is not None:
            on_step(stats["steps"], sum(len(o) for o in outs.tokens))
    total = time.perf_counter() - t0
    if spec:
        stats["accept_hist"] = hist
        n = sum(hist)
        stats["tau"] = sum((a + 1) * c for a, c in enumerate(hist)) / n if n else 1.0
        stats["num_proposals"] = width - 1
        stats["accept_by_depth"] = [h / t if t else None for h, t in zip(depth_hits, depth_trials)]
        stats["draft_lengths"] = {str(k): v for k, v in sorted(lengths.items())}
        if compare_rule is not None:
            stats["compare_rule"] = compare_rule
            stats["compare_tau"] = compare[0] / compare[1] if compare[1] else 1.0
    else:
        stats["tau"] = 1.0
    return _finish(outs, stats, records, spans, total)


def _watch_text(watch: RepeatWatch, policy: AdaptivePolicy, b: int, tokens) -> None:
    """Tell the policy when request b's text starts or stops repeating itself."""
    was = watch.inside[b]
    started = watch.extend(b, tokens)
    if started or watch.inside[b] != was:
        policy.note_repeat(b, started, watch.inside[b])


def _prefill(state: DecodeState, prompts: list, outs: _Outputs, spans: list) -> None:
    """Every prompt token, packed and causal; logits at each prompt's last token; the first token
    by ``domino::sample``; the prompt's target features are queued for the draft."""
    dev, s = state.anchor.device, state.sampling
    bsz = len(prompts)
    all_rows = torch.arange(bsz, device=dev)
    cu = _cu([len(p) for p in prompts], dev)
    positions = torch.cat([torch.arange(len(p), device=dev) for p in prompts])
    tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.int64, device=dev)
    logits, feats = state.target.forward(tokens, positions, state.cache, all_rows, cu,
                                         logits_rows=cu[1:].long() - 1)
    state.cache.commit(all_rows, cu[1:] - cu[:-1])
    state.anchor = kernels.sample(logits, s.temperature, s.top_k, s.top_p, None, s.seed, s.offset)
    if state.draft is not None:   # the draft's context pass waits for the first drafted step
        push_prompt_context(state, feats, positions, [len(p) for p in prompts])
    for b, t in enumerate(state.anchor.tolist()):
        spans[b].append(StepSpan(0, 0, outs.emit(b, [t])))


def _compare(state, d, v, rule, acc_sum) -> None:
    """Statistics only: the same drafts and target logits verified by ``rule`` (a second verify
    call; the decode continues with the real result)."""
    out = verify_logits(state, d, v.logits, rule)
    a = out[0].tolist()
    acc_sum[0] += sum(x + 1 for x in a)
    acc_sum[1] += len(a)


def _record(state: DecodeState, d, acc) -> dict:
    num = d.num_nodes.tolist()
    rec = {"requests": list(state.active), "draft": [r[1:n] for r, n in zip(d.tokens.tolist(), num)],
           "accepted": acc}
    if d.tree:
        rec["parents"] = [r[1:n] for r, n in zip(d.parents.tolist(), num)]
    return rec


def _cumsum(counts):
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def _cu(counts, device) -> torch.Tensor:
    """``q_cu_lens`` of packed per-request counts (built on the host: no device sync)."""
    return torch.tensor(_cumsum(counts), dtype=torch.int32, device=device)


def _finish(outs: _Outputs, stats: dict, records, spans: list, total_s: float) -> GenerateResult:
    new = sum(len(o) for o in outs.tokens)
    stats["new_tokens"] = new
    stats["total_s"] = total_s
    decode_s = total_s - stats["prefill_s"]
    stats["tokens_per_s"] = new / total_s if total_s > 0 else 0.0
    stats["decode_tokens_per_s"] = (new - stats["requests"]) / decode_s if decode_s > 0 else 0.0
    return GenerateResult(outs.tokens, stats, records, spans)
