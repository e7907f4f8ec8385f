"""One decode step in three stages over a :class:`DecodeState`: draft -> verify -> accept.

Every tensor a step needs is derived on the device from the previous step's results
(``accept_len`` / ``accept_path``): the accepted K/V moves, the commit counts, the features handed
to the draft and the next anchor. The only device->host transfer is the caller's read of
``(accept_len, emitted)`` for the output lists and the stop check, and nothing is copied host->
device unless the set of active requests changes (then ``rows`` is rebuilt once). Shapes depend
only on the batch size and the draft length, which is what a CUDA graph per length needs.

Draft rows are padded to the step's width ``W = n + 1`` (anchor + n drafted tokens): the verify
forward runs ``W`` tokens per request and the features of all ``W`` nodes go to the draft cache,
of which only the accepted ``accept_len + 1`` are committed (the rest are scratch, overwritten by
the next append).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import ops as kernels
from .model.dflash import DraftModel
from .model.qwen3 import PagedKVCache, Qwen3


MAX_PENDING = 64   # feature chunks (steps) kept for the draft; older ones of a plain run are dropped


@dataclass
class Sampling:
    """Per-request sampling parameters ``[B]`` (device tensors): the target's processing, the
    draft's temperature, and the Philox key/offset (the offset advances once per step)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    draft_temperature: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor


@dataclass
class PendingContext:
    """Target features of committed positions not yet in the draft KV: ``feats [n, w, F]`` and
    ``positions [n, w]`` padded per request, of which the first ``counts[i]`` are committed, for
    the requests ``rows`` (the active rows when they were produced)."""

    rows: torch.Tensor
    feats: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor
    full: bool = False              # counts == w for every request (plain steps): chunks can merge


@dataclass
class Draft:
    """A drafted tree per active request in verify's layout (a chain is the path tree):
    ``tokens / parents [b, W]`` (node 0 = anchor), ``num_nodes [b]``, the q rows the children of
    each node were drawn from (``q_rows [b, W, V]``, None for deterministic drafts) and the rule
    that verifies them losslessly."""

    tokens: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor
    rule: str
    q_rows: Optional[torch.Tensor] = None
    tree: bool = False


@dataclass
class Verified:
    accept_len: torch.Tensor        # [b] int64
    accept_path: torch.Tensor       # [b, W] int64, -1 padded
    emitted: torch.Tensor           # [b, W] int64, -1 padded
    feats: torch.Tensor             # [b, W, F] captured target features of every node
    positions: torch.Tensor         # [b, W] int64
    logits: torch.Tensor            # [b, W, V] fp32 target logits of every node


@dataclass
class DecodeState:
    """Everything a decode step reads and writes, per request (index = request id)."""

    target: Qwen3
    cache: PagedKVCache
    anchor: torch.Tensor            # [B] int64: last emitted token, not yet run through the target
    sampling: Sampling
    draft: Optional[DraftModel] = None          # the drafting model (a headless copy for DFlash)
    draft_cache: Optional[PagedKVCache] = None
    active: list = field(default_factory=list)  # host list of active request ids (ascending)
    rows: Optional[torch.Tensor] = None         # the same on the device
    pending: list = field(default_factory=list)  # PendingContext chunks, oldest first
    greedy: bool = True                          # temperature 0 (one temperature per batch)
    context_gaps: bool = False                   # some positions never reached the draft cache

    def set_active(self, active: list) -> None:
        if active != self.active:
            self.active = list(active)
            self.rows = torch.tensor(active, dtype=torch.int64, device=self.anchor.device)


def drafting_model(draft: DraftModel, use_head: bool) -> DraftModel:
    """The draft itself, or the same backbone with the Domino head off (DFlash-only drafting)."""
    if use_head or draft.head is None:
        return draft
    plain = copy.copy(draft)
    plain.head, plain.gru_table, plain.w2_packed = None, None, None
    return plain


def _width_cu(batch: int, width: int, device) -> torch.Tensor:
    return torch.arange(0, (batch + 1) * width, width, dtype=torch.int32, device=device)


def push_pending(state: DecodeState, chunk: PendingContext) -> None:
    """Queue a step's features for the draft. Only the last ``MAX_PENDING`` steps are kept: after
    a long run of plain steps the draft resumes with the recent context only (appending every
    position of the run would cost the draft's context pass per token, about 5 % of a plain step
    on the default pair, for drafts the policy did not want). That approximates the draft only;
    verification stays exact."""
    state.pending.append(chunk)
    if len(state.pending) > MAX_PENDING:
        del state.pending[0]
        state.context_gaps = True


def push_prompt_context(state: DecodeState, feats: torch.Tensor, positions: torch.Tensor, lens: list) -> None:
    """Queue the prompts' target features (packed ``feats [sum(lens), F]``, ``positions``) for
    the draft like a step's, padded per request: the draft's context pass over the prompt runs at
    the first drafted step (with everything queued since), not at prefill, so a request the policy
    never drafts for never pays it (and after ``MAX_PENDING`` plain steps it is dropped)."""
    rows = torch.arange(len(lens), device=feats.device)
    pad = torch.nn.utils.rnn.pad_sequence
    counts = torch.tensor(lens, dtype=torch.int64, device=feats.device)
    push_pending(state, PendingContext(rows, pad(list(feats.split(lens)), batch_first=True),
                                       pad(list(positions.split(lens)), batch_first=True), counts))


def _merged(chunks: list) -> list:
    """Runs of consecutive full chunks of the same rows (plain steps) joined into one."""
    out = []
    for c in chunks:
        last = out[-1] if out else None
        if last is not None and last[0].full and c.full and last[0].rows is c.rows:
            last.append(c)
        else:
            out.append([c])
    return [run[0] if len(run) == 1 else
            PendingContext(run[0].rows, torch.cat([c.feats for c in run], 1),
                           torch.cat([c.positions for c in run], 1), sum(c.counts for c in run), True)
            for run in out]


def flush_pending(state: DecodeState) -> None:
    """Append every pending chunk's features to the draft KV of the active requests."""
    rows, dev = state.rows, state.anchor.device
    for c in _merged(state.pending):
        feats, positions, counts = c.feats, c.positions, c.counts
        if c.rows is not rows:                   # requests finished since: keep the active ones
            idx = torch.searchsorted(c.rows, rows)
            feats, positions, counts = feats[idx], positions[idx], counts[idx]
        b, w, f = feats.shape
        state.draft.append_context(feats.reshape(b * w, f), positions.reshape(-1), state.draft_cache, rows,
                                   _width_cu(b, w, dev), commit_lens=counts)
    state.pending = []


# ---- stage 1: draft ----------------------------------------------------------------------------

def verify_rule(tree: bool, sampled: bool, greedy: bool) -> str:
    """The lossless rule for a draft: sampled chains by rejection with their q rows, sampled trees
    by rejection without replacement (RSD); deterministic drafts greedily at T = 0, else by the
    target-only rule (sample-and-match)."""
    if sampled:
        return "rejection_without_replacement" if tree else "rejection"
    return "greedy" if greedy else "target_only"


def draft_chain(state: DecodeState, n: int, sampled: bool) -> Draft:
    """``n`` proposals per active request: sampled from the draft's q (verified by rejection), or
    greedy (verified by the greedy rule at T = 0, by sample-and-match at T > 0)."""
    rows, s = state.rows, state.sampling
    anchor = state.anchor[rows]
    z = _block(state, anchor)
    b, dev = rows.numel(), anchor.device
    if sampled:
        y, q = state.draft.sample_chain(z, anchor, state.target, n, s.draft_temperature[rows], s.seed[rows],
                                        s.offset[rows])
        q_rows = torch.cat([q, q.new_zeros(b, 1, q.shape[-1])], dim=1)  # the last node has no children
    else:
        y, q_rows = state.draft.propose_chain(z, anchor, state.target, n), None
    tokens = torch.cat([anchor[:, None], y], dim=1)
    return Draft(tokens, kernels.chain_parents(b, n + 1, dev),
                 torch.full((b,), n + 1, dtype=torch.int64, device=dev), verify_rule(False, sampled, state.greedy),
                 q_rows)


def draft_tree(state: DecodeState, topk: int, budget: int, sampled: bool) -> Draft:
    """A tree of ``budget`` nodes (``topk`` children per expanded node). Sampled (T > 0): each
    expanded node's children are a sample without replacement from its q, verified by
    ``rejection_without_replacement`` (RSD) with the q rows; else deterministic top-k children,
    verified greedily at T = 0 and by the target-only rule at T > 0."""
    rows, s = state.rows, state.sampling
    anchor = state.anchor[rows]
    z = _block(state, anchor)
    if sampled:
        tokens, parents, num, q_rows = state.draft.sample_tree(z, anchor, state.target, topk, budget,
                                                               s.draft_temperature[rows], s.seed[rows],
                                                               s.offset[rows])
    else:
        tokens, parents, num = state.draft.propose_tree(z, anchor, state.target, topk, budget)
        q_rows = None
    return Draft(tokens.contiguous(), parents.contiguous(), num.to(torch.int64),
                 verify_rule(True, sampled, state.greedy),
                 None if q_rows is None else q_rows.contiguous(), tree=True)


def _block(state: DecodeState, anchor: torch.Tensor) -> torch.Tensor:
    flush_pending(state)
    if state.context_gaps:   # the draft cache holds fewer positions than the target's: say where
        return state.draft.block_forward(anchor, state.target.embed, state.draft_cache, state.rows,
                                         start=state.cache.lens[state.rows])
    return state.draft.block_forward(anchor, state.target.embed, state.draft_cache, state.rows)


# ---- stage 2: verify ---------------------------------------------------------------------------

def verify(state: DecodeState, d: Draft, rule: Optional[str] = None) -> Verified:
    """Run ``[anchor, drafted]`` through the target on top of each request's committed KV (causal
    for a chain, the tree mask for a tree) and verify with ``rule`` (default: the draft's)."""
    rows, target = state.rows, state.target
    b, w = d.tokens.shape
    dev = d.tokens.device
    start = state.cache.lens[rows].long()
    cu = _width_cu(b, w, dev)
    if d.tree:
        node = torch.arange(w, device=dev)
        pad = node[None, :] >= d.num_nodes[:, None]
        # padding nodes run as leaves under the root (never verified; their K/V stay scratch)
        fwd_parents = torch.where(pad, torch.zeros_like(d.parents), d.parents)
        fwd_parents[:, 0] = -1
        mask, _, positions = kernels.tree_info(fwd_parents, prefix_lens=start)
        logits, feats = target.forward(d.tokens.clamp(min=0).reshape(-1), positions.reshape(-1), state.cache,
                                       rows, cu, mode="tree", tree_mask=mask.reshape(b * w, -1))
    else:
        positions = start[:, None] + torch.arange(w, device=dev)
        logits, feats = target.forward(d.tokens.reshape(-1), positions.reshape(-1), state.cache, rows, cu,
                                       mode="causal")
    logits = logits.view(b, w, -1)
    acc, path, emitted = verify_logits(state, d, logits, rule or d.rule)
    return Verified(acc, path, emitted, feats.view(b, w, -1), positions, logits)


def verify_logits(state: DecodeState, d: Draft, logits: torch.Tensor, rule: str):
    rows, s = state.rows, state.sampling
    q = d.q_rows if rule in ("rejection", "rejection_without_replacement") else None
    return kernels.verify(d.tokens, d.parents, logits, num_nodes=d.num_nodes, rule=rule,
                          temperature=s.temperature[rows], top_k=s.top_k[rows], top_p=s.top_p[rows],
                          draft_probs=q, seed=s.seed[rows], offset=s.offset[rows])


# ---- stage 3: accept ---------------------------------------------------------------------------

def accept(state: DecodeState, d: Draft, v: Verified) -> None:
    """Commit the accepted path: compact its K/V into slots ``s..s+a`` (trees), advance the
    committed lengths, queue its features for the draft and make the bonus token the anchor."""
    rows = state.rows
    b, w = d.tokens.shape
    dev = rows.device
    count = v.accept_len + 1
    start = state.cache.lens[rows].long()
    feats, positions = v.feats, v.positions
    if d.tree:
        # slot j <- node path[j] (path[j] >= j, so no move reads a slot an earlier one wrote;
        # move_tokens gathers before writing anyway); past the path every slot moves onto itself
        depth = torch.arange(w, device=dev).expand(b, w)
        node = torch.where(v.accept_path >= 0, v.accept_path, depth)
        state.cache.move_tokens(rows.repeat_interleave(w), (start[:, None] + node).reshape(-1),
                                (start[:, None] + depth).reshape(-1))
        feats = feats.gather(1, node[:, :, None].expand(-1, -1, feats.shape[-1]))
        positions = start[:, None] + depth
    state.cache.commit(rows, count)
    if state.draft is not None:
        push_pending(state, PendingContext(rows, feats, positions, count))
    state.anchor[rows] = v.emitted.gather(1, v.accept_len[:, None])[:, 0]


def plain_step(state: DecodeState, queue_context: bool = True) -> torch.Tensor:
    """One target token per active request (a draft length of 0): the target-only decode step,
    with the same sampling call and offsets, so it emits exactly what target-only decoding would.
    Returns the tokens ``[b]``. With a draft, the step's target features are queued for it, unless
    ``queue_context=False`` (the policy will not draft soon): then the step is exactly a target-only
    step (no feature capture) and its position never reaches the draft cache (a context gap, which
    approximates later drafts only; verification stays exact)."""
    rows, s, target = state.rows, state.sampling, state.target
    b, dev = rows.numel(), rows.device
    queue = state.draft is not None and queue_context
    start = state.cache.lens[rows].long()
    logits, feats = target.forward(state.anchor[rows], start, state.cache, rows, _width_cu(b, 1, dev),
                                   capture=queue)
    ones = torch.ones(b, dtype=torch.int64, device=dev)
    state.cache.commit(rows, ones)
    nxt = kernels.sample(logits, s.temperature[rows], s.top_k[rows], s.top_p[rows], None, s.seed[rows],
                         s.offset[rows])
    if queue:
        push_pending(state, PendingContext(rows, feats.view(b, 1, -1), start[:, None], ones, full=True))
    elif state.draft is not None:
        state.context_gaps = True
    state.anchor[rows] = nxt
    return nxt
