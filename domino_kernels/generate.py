"""generate(): batched Domino speculative decoding (spec §4.1) and plain target-only decoding.

One decode step for the active requests (``rows``):
  1. draft: append the pending context features (target features of the positions committed in
     the previous step) to the draft KV cache, run the 16-slot block, roll out N proposals (chain)
     or a tree with node 0 = anchor;
  2. verify: run [anchor, proposals] through the target on top of its committed KV (causal for a
     chain, the tree mask for a tree), keeping logits at every node and the captured features;
  3. accept: ``verify`` picks the accepted path and the bonus token; the accepted path's KV is
     compacted into place (tree) and committed, the rest of the written slots become scratch;
     the features of the accepted nodes become the next pending context; the bonus token is the
     next anchor.
Host syncs per step: one transfer of (accept_len, emitted, accept_path), from which the output
lists, the stop check and the step's packing indices are built on the host; trees add one read of
their sizes; on CUDA, timing adds a sync between draft and verify. The ops themselves never sync.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from . import ops as kernels
from .model.dflash import DraftModel
from .model.qwen3 import Qwen3


@dataclass
class GenerateResult:
    tokens: list                        # per request: generated ids (prompt excluded)
    stats: dict
    trace: Optional[list] = None        # per decode step: requests, draft, parents (tree), accepted


@dataclass
class _Outputs:
    """Per-request output lists with the stop-token and max-new-tokens rules applied."""

    max_new: int
    stop: set
    tokens: list = field(default_factory=list)
    done: list = field(default_factory=list)

    def emit(self, b: int, ids: Sequence[int]) -> None:
        out = self.tokens[b]
        for t in ids:
            if self.done[b]:
                return
            out.append(int(t))
            if len(out) >= self.max_new or int(t) in self.stop:
                self.done[b] = True


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


def _per_row(value, b, dtype, device):
    return torch.full((b,), value, dtype=dtype, device=device)


def generate(target: Qwen3, prompts, *, draft: Optional[DraftModel] = None, max_new_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Optional[Sequence[int]] = None, ignore_eos: bool = False,
             num_proposals: Optional[int] = None, tree_topk: int = 0, tree_budget: int = 0,
             use_head: bool = True, trace: bool = False,
             on_step: Optional[Callable[[int, int], None]] = None) -> GenerateResult:
    """Decode ``prompts`` (lists of token ids, any lengths) with ``target``, speculatively when a
    ``draft`` is given. Greedy at ``temperature=0`` (output equals target-only greedy decoding),
    else sampling with top-k / top-p, reproducible from ``seed``. ``tree_topk > 0`` and
    ``tree_budget > 0`` draft a tree of ``tree_budget`` nodes instead of a chain. ``use_head=False``
    runs a Domino draft as plain DFlash. Stops a request at a stop token (included in its output)
    or after ``max_new_tokens``. ``on_step(step, total_new_tokens)`` is called after every step."""
    prompts = _check_prompts(prompts, target, max_new_tokens)
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
    if tree_topk < 0 or tree_budget < 0 or (tree_topk > 0) != (tree_budget > 0):
        raise ValueError(f"tree drafting needs both 'tree_topk' and 'tree_budget' > 0 (chain: both 0), "
                         f"got tree_topk={tree_topk}, tree_budget={tree_budget}")
    dev = target.device
    bsz = len(prompts)
    stop = set() if ignore_eos else set(target.cfg.eos_token_ids if stop_ids is None else stop_ids)
    outs = _Outputs(max_new_tokens, stop, [[] for _ in prompts], [max_new_tokens == 0] * bsz)
    stats = {"requests": bsz, "steps": 0, "new_tokens": 0, "prefill_s": 0.0, "draft_s": 0.0,
             "verify_s": 0.0, "bookkeeping_s": 0.0, "mode": "target-only"}
    if max_new_tokens == 0:
        return _finish(outs, stats, [], 0.0)

    spec = draft is not None
    tree = spec and tree_topk > 0 and tree_budget > 0
    head = draft.head if spec and use_head else None
    if spec:
        n_prop = num_proposals or draft.max_proposals()
        if not 1 <= n_prop <= draft.max_proposals():
            raise ValueError(f"argument 'num_proposals' must be in [1, {draft.max_proposals()}], got {n_prop}")
        width = 1 + (tree_budget if tree else n_prop)
        if dev.type == "cuda":
            draft.use_gru_table(target)  # built once per draft, kept for later calls
        else:
            draft.use_packed_w2()  # likewise (a no-op without AVX512_BF16 or a bf16 head)
        stats["mode"] = ("tree" if tree else "chain") + (" domino" if head is not None else " dflash")
    else:
        width = 1
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.int64, device=dev)
    capacity = max(len(p) for p in prompts) + max_new_tokens + width + 1
    cache = target.new_cache(bsz, capacity)
    target.capture_layers = list(draft.cfg.target_layer_ids) if spec else []
    if spec:
        target.last_layer_feature = draft.cfg.last_layer_feature
    temps = _per_row(float(temperature), bsz, torch.float32, dev)
    topks = _per_row(int(top_k), bsz, torch.int64, dev)
    topps = _per_row(float(top_p), bsz, torch.float32, dev)
    seeds = (int(seed) << 20) + torch.arange(bsz, dtype=torch.int64, device=dev)
    step_offset = torch.zeros(bsz, dtype=torch.int64, device=dev)  # one Philox offset per step
    t0 = time.perf_counter()

    # prefill: every prompt token, causal; logits at each prompt's last token only
    all_rows = torch.arange(bsz, device=dev)
    cu = _cu([len(p) for p in prompts], dev)
    positions = torch.cat([torch.arange(len(p), device=dev) for p in prompts])
    tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.int64, device=dev)
    logits, feats = target.forward(tokens, positions, cache, all_rows, cu, logits_rows=cu[1:].long() - 1)
    cache.commit(all_rows, lens)
    anchor = kernels.sample(logits, temps, topks, topps, None, seeds, step_offset)
    for b, t in enumerate(anchor.tolist()):
        outs.emit(b, [t])
    _sync(dev)
    stats["prefill_s"] = time.perf_counter() - t0

    if spec:
        draft_cache = draft.new_cache(bsz, capacity + draft.cfg.block_size)
        pending = (feats, positions, [b for b, p in enumerate(prompts) for _ in p])
        hist = [0] * width
    records = [] if trace else None
    while not all(outs.done):
        active = [b for b in range(bsz) if not outs.done[b]]
        rows = torch.tensor(active, dtype=torch.int64, device=dev)
        step_offset += 1
        ta = time.perf_counter()
        if not spec:
            ba = len(active)
            cu1 = torch.arange(ba + 1, dtype=torch.int32, device=dev)
            logits, _ = target.forward(anchor[rows], cache.lens[rows].long(), cache, rows, cu1)
            cache.commit(rows, torch.ones(ba, dtype=torch.int32, device=dev))
            nxt = kernels.sample(logits, temps[rows], topks[rows], topps[rows], None, seeds[rows],
                                 step_offset[rows])
            anchor[rows] = nxt
            for b, t in zip(active, nxt.tolist()):
                outs.emit(b, [t])
            _sync(dev)
            stats["verify_s"] += time.perf_counter() - ta
        else:
            anchor, pending = _spec_step(target, draft, head, cache, draft_cache, rows, active, anchor,
                                         pending, outs, stats, hist, records, tree, n_prop, tree_topk,
                                         tree_budget, temps, topks, topps, seeds, step_offset, temperature)
        stats["steps"] += 1
        if on_step is not None:
            on_step(stats["steps"], sum(len(o) for o in outs.tokens))
    total = time.perf_counter() - t0
    if spec:
        stats["accept_hist"] = hist
        n = sum(hist)
        stats["tau"] = sum((a + 1) * c for a, c in enumerate(hist)) / n if n else 0.0
        stats["num_proposals"] = width - 1
    else:
        stats["tau"] = 1.0
    return _finish(outs, stats, records, total)


def _spec_step(target, draft, head, cache, draft_cache, rows, active, anchor, pending, outs, stats, hist,
               records, tree, n_prop, tree_topk, tree_budget, temps, topks, topps, seeds, step_offset,
               temperature):
    dev = target.device
    ba = rows.numel()
    t0 = time.perf_counter()
    feats, ctx_pos, ctx_req = pending            # packed rows; ctx_req: host list, ascending request
    live = set(active)
    if any(r not in live for r in ctx_req):       # requests that finished leave the batch
        keep = torch.tensor([j for j, r in enumerate(ctx_req) if r in live], dtype=torch.int64, device=dev)
        feats, ctx_pos = feats.index_select(0, keep), ctx_pos.index_select(0, keep)
        ctx_req = [r for r in ctx_req if r in live]
    per_req = Counter(ctx_req)
    ctx_cu = _cu([per_req[b] for b in active], dev)
    draft.append_context(feats, ctx_pos, draft_cache, rows, ctx_cu)
    z = draft.block_forward(anchor[rows], target.embed, draft_cache, rows)
    model = draft if head is draft.head else _without_head(draft)
    if tree:
        tokens, parents, num = model.propose_tree(z, anchor[rows], target, tree_topk, tree_budget)
        tokens, parents, num = tokens.contiguous(), parents.contiguous(), num.to(torch.int64)
        num_host = num.tolist()                   # tree sizes decide the packing: a host read
    else:
        y = model.propose_chain(z, anchor[rows], target, n_prop)
        tokens = torch.cat([anchor[rows, None], y], dim=1)
        parents = kernels.chain_parents(ba, n_prop + 1, dev)
        num_host = [n_prop + 1] * ba
        num = torch.full((ba,), n_prop + 1, dtype=torch.int64, device=dev)
    _sync(dev)
    t1 = time.perf_counter()

    # verify: packed nodes of every active request on top of its committed KV
    width = tokens.shape[1]
    s = cache.lens[rows].long()
    cu = _cu(num_host, dev)
    if tree:
        flat = torch.tensor([i * width + j for i, n in enumerate(num_host) for j in range(n)],
                            dtype=torch.int64, device=dev)
        mask, _, positions = kernels.tree_info(parents, num_nodes=num, prefix_lens=s)
        logits, vfeats = target.forward(tokens.reshape(-1)[flat], positions.reshape(-1)[flat], cache, rows, cu,
                                        mode="tree", tree_mask=mask.reshape(ba * width, -1)[flat])
        padded = logits.new_zeros(ba * width, logits.shape[-1]).index_copy_(0, flat, logits)
        padded = padded.view(ba, width, -1)       # ragged trees in the [B, T, V] layout verify reads
    else:
        positions = (s[:, None] + torch.arange(width, device=dev)).reshape(-1)
        logits, vfeats = target.forward(tokens.reshape(-1), positions, cache, rows, cu, mode="causal")
        padded = logits.view(ba, width, -1)
    rule = "greedy" if temperature == 0 else "target_only"
    acc, path, emitted = kernels.verify(tokens, parents, padded, num_nodes=num, rule=rule,
                                        temperature=temps[rows], top_k=topks[rows], top_p=topps[rows],
                                        seed=seeds[rows], offset=step_offset[rows])
    host = torch.cat([acc.long()[:, None], emitted.long(), path.long()], dim=1).tolist()  # the step's sync
    t2 = time.perf_counter()

    # accept: compact the accepted path's KV, commit, hand its features to the draft
    acc_host = [h[0] for h in host]
    paths = [h[1 + width: 2 + width + a] for h, a in zip(host, acc_host)]  # accepted nodes, root first
    slot = [(i, j, node) for i, p in enumerate(paths) for j, node in enumerate(p)]
    row_i = torch.tensor([i for i, _, _ in slot], dtype=torch.int64, device=dev)
    depth = torch.tensor([j for _, j, _ in slot], dtype=torch.int64, device=dev)
    if tree:
        moves = [(i, j, node) for i, j, node in slot if node != j]
        if moves:
            mi = torch.tensor([i for i, _, _ in moves], dtype=torch.int64, device=dev)
            src = torch.tensor([n for _, _, n in moves], dtype=torch.int64, device=dev) + s[mi]
            dst = torch.tensor([j for _, j, _ in moves], dtype=torch.int64, device=dev) + s[mi]
            cache.move_tokens(rows[mi], src, dst)
    cache.commit(rows, torch.tensor([a + 1 for a in acc_host], dtype=torch.int32, device=dev))
    starts = _cumsum(num_host)                    # packed row of node n of request i: starts[i] + n
    new_feats = vfeats.index_select(0, torch.tensor([starts[i] + node for i, _, node in slot],
                                                    dtype=torch.int64, device=dev))
    new_pos = s[row_i] + depth
    anchor = anchor.clone()
    anchor[rows] = torch.tensor([h[1 + a] for h, a in zip(host, acc_host)], dtype=anchor.dtype, device=dev)
    for i, b in enumerate(active):
        a = acc_host[i]
        hist[a] += 1
        outs.emit(b, host[i][1:a + 2])
    if records is not None:
        rec = {"requests": active, "draft": [r[1:n] for r, n in zip(tokens.tolist(), num_host)],
               "accepted": acc_host}
        if tree:
            rec["parents"] = [r[1:n] for r, n in zip(parents.tolist(), num_host)]
        records.append(rec)
    t3 = time.perf_counter()
    stats["draft_s"] += t1 - t0
    stats["verify_s"] += t2 - t1
    stats["bookkeeping_s"] += t3 - t2
    return anchor, (new_feats, new_pos, [active[i] for i, _, _ in slot])


def _cumsum(counts):
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def _cu(counts, device) -> torch.Tensor:
    """``q_cu_lens`` of packed per-request counts (built on the host: no device sync)."""
    return torch.tensor(_cumsum(counts), dtype=torch.int32, device=device)


def _without_head(draft: DraftModel) -> DraftModel:
    """The same backbone with the Domino head switched off (DFlash-only drafting)."""
    import copy

    plain = copy.copy(draft)
    plain.head, plain.gru_table, plain.w2_packed = None, None, None
    return plain


def _finish(outs: _Outputs, stats: dict, records, total_s: float) -> GenerateResult:
    new = sum(len(o) for o in outs.tokens)
    stats["new_tokens"] = new
    stats["total_s"] = total_s
    decode_s = total_s - stats["prefill_s"]
    stats["tokens_per_s"] = new / total_s if total_s > 0 else 0.0
    stats["decode_tokens_per_s"] = (new - stats["requests"]) / decode_s if decode_s > 0 else 0.0
    return GenerateResult(outs.tokens, stats, records)
