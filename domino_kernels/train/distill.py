"""Distil drafters from the target's own continuations and distribution (spec §6, at laptop scale).

Data (``distill_data``): prompts are windows of the training corpus; the target continues each
greedily, or for a seeded share of them by sampling at T=1, so the drafters see the contexts of
both greedy and sampled decoding. A block is anchored at a position ``a`` whose following tokens
are all target continuation, so every label is what the target itself emitted after the
committed prefix: exactly what a drafter is asked to predict at decode time. Context features of ``target_layer_ids`` are
Hugging Face ``hidden_states[id + 1]``, as in the training reference (SpecForge): the residual-stream
output of layer ``id``, except that for the target's last layer it is the final norm's output
(``last_layer_feature="residual"`` takes the raw residual stream there instead, vLLM's choice).

Per-slot loss of logits ``q`` for a slot whose label is ``x`` and whose target distribution is
``p`` (the target's softmax at T=1 at the position that predicts ``x``):
``ℓ(q) = w_kl·KL(p‖q) + (1-w_kl)·CE(q, x)`` (``kl_weight``). Domino (shift_label=true): slot j of
the block anchored at a predicts x[a+j+1] (p from the target's logits at a+j);
``L = (1-λ)·ℓ(base + correction) + λ·ℓ(base)``, λ linear from 1 to 0 over the run (the
base-anchored curriculum), per-slot weights ``exp(-max(j - offset, 0)/γ)`` (offset 0), the GRU
reading the sequence's tokens x[a..a+B-1] (teacher forcing). DFlash-only (shift_label=false):
slot j predicts x[a+j] for j ≥ 1 (p from the target's logits at a+j-1), slot 0 unsupervised,
offset 1, loss ℓ(base).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..model.config import FINAL_NORM, DraftConfig, Qwen3Config
from .distill_data import (DistillData, build_distill_data, capture_features,  # noqa: F401 (re-exported)
                           target_logits)
from .draft_model import DraftModel, save_draft
from .schedule import Schedule, lr_at


@dataclass
class DraftRecipe(Schedule):
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.0
    batch: int = 16
    anchors: int = 4
    gamma: float = 7.0
    lambda_start: float = 1.0
    decay_ratio: float = 1.0
    kl_weight: float = 0.5   # share of KL(p_target‖q) in each slot's loss; the rest is CE

    def __post_init__(self):
        if not 0.0 <= self.kl_weight <= 1.0:
            raise ValueError(f"kl_weight (--kl-weight) must be in [0, 1], got {self.kl_weight}")


def sample_anchors(data: DistillData, rows: torch.Tensor, n_anchors: int, gen: torch.Generator) -> torch.Tensor:
    """``[b, A]`` anchor positions per sequence, drawn independently for each sequence from
    ``[prompt_len-1, valid_len-2]`` (the anchor's next token is a continuation token)."""
    lo = data.prompt_len - 1
    out = []
    for r in rows.tolist():
        hi = int(data.valid_len[r]) - 2
        span = max(hi - lo + 1, 1)
        pick = torch.randperm(span, generator=gen)[:n_anchors] + lo
        if pick.numel() < n_anchors:  # very short continuation: repeat anchors
            pick = pick.repeat(n_anchors)[:n_anchors]
        out.append(pick)
    return torch.stack(out)


def block_labels(data: DistillData, rows, anchors, block: int, shift: bool):
    """Labels ``[b, A, B]`` and validity: slot j ↦ x[a+j+1] (shift) or x[a+j] (j ≥ 1)."""
    tok = data.tokens[rows]
    length = data.tokens.shape[1]
    j = torch.arange(block)
    pos = anchors[:, :, None] + j + (1 if shift else 0)
    valid = pos < data.valid_len[rows][:, None, None]
    if not shift:
        valid = valid & (j > 0)
    labels = torch.gather(tok, 1, pos.clamp(max=length - 1).view(len(rows), -1)).view_as(pos)
    return labels, valid


def gru_inputs(data: DistillData, rows, anchors, block: int):
    """Teacher-forced GRU inputs x[a..a+B-1] (positions past the sequence clamp; their slots are
    never supervised and the GRU is causal)."""
    tok = data.tokens[rows]
    pos = (anchors[:, :, None] + torch.arange(block)).clamp(max=tok.shape[1] - 1)
    return torch.gather(tok, 1, pos.view(len(rows), -1)).view_as(pos)


def slot_weights(block: int, gamma: float, offset: int) -> torch.Tensor:
    k = torch.arange(block, dtype=torch.float32)
    return torch.exp(-(k - offset).clamp(min=0) / gamma)


def lambda_at(step: int, steps: int, r: DraftRecipe) -> float:
    span = max(1, int(r.decay_ratio * steps))
    return max(0.0, r.lambda_start * (1 - step / span))


class TargetDist:
    """The target's distribution per slot from its logits ``[..., V]``: ``p`` and ``Σ p·log p``
    (computed once, shared by every draft path scored against it)."""

    def __init__(self, logits: torch.Tensor):
        log_p = F.log_softmax(logits, dim=-1)
        self.p = log_p.exp()
        self.neg_entropy = (self.p * log_p).sum(-1)


def kl_to_target(logits: torch.Tensor, t: TargetDist, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(p‖q) = Σ p·log p − Σ p·log q`` per slot ``[...]`` for draft logits ``[..., V]``."""
    if log_q is None:
        log_q = F.log_softmax(logits, dim=-1)
    return t.neg_entropy - (t.p * log_q).sum(-1)


def slot_loss(logits, labels, t: TargetDist, kl_weight: float):
    """``(ℓ, KL)`` per slot: ``ℓ = kl_weight·KL(p‖q) + (1-kl_weight)·CE(q, label)``, one
    log-softmax of the draft logits shared by both terms."""
    log_q = F.log_softmax(logits, dim=-1)
    ce = -log_q.gather(-1, labels[..., None]).squeeze(-1)
    kl = kl_to_target(logits, t, log_q)
    return kl_weight * kl + (1 - kl_weight) * ce, kl


def draft_forward(model: DraftModel, data: DistillData, rows, anchors):
    """Teacher-forced ``(base, final)`` logits ``[b, A, B, V]`` of the blocks (final is None
    without a Domino head; its first ``pure_draft_prefix_len`` slots are the base logits)."""
    s = model.cfg
    anchor_ids = torch.gather(data.tokens[rows], 1, anchors)
    z = model.backbone(data.feats[rows].float(), anchors, anchor_ids)
    base = model.base_logits(z)
    if not s.has_head:
        return base, None
    corr = model.correction(z, gru_inputs(data, rows, anchors, s.block_size))
    prefix = torch.arange(s.block_size) < s.pure_draft_prefix_len  # base logits only there
    return base, base + corr * (~prefix)[None, None, :, None]


def draft_loss(model: DraftModel, data: DistillData, rows, anchors, lam: float, r: DraftRecipe):
    """The curriculum loss and per-path statistics (accuracy, weighted by validity only; KL, by
    the loss weights)."""
    s = model.cfg
    nb, shift = s.block_size, s.shift_label
    base, final = draft_forward(model, data, rows, anchors)
    labels, valid = block_labels(data, rows, anchors, nb, shift)
    t = TargetDist(target_logits(data, rows, anchors, nb, shift, model.lm_head))
    w = slot_weights(nb, r.gamma, 0 if shift else 1)[None, None] * valid
    denom = w.sum().clamp(min=1e-6)
    n_valid = valid.sum().clamp(min=1)
    l_base, kl_base = slot_loss(base, labels, t, r.kl_weight)
    stats = {"acc_base": float(((base.argmax(-1) == labels) & valid).sum() / n_valid),
             "kl_base": float((kl_base.detach() * w).sum() / denom)}
    if final is None:
        return (l_base * w).sum() / denom, stats
    l_final, kl_final = slot_loss(final, labels, t, r.kl_weight)
    loss = ((1 - lam) * l_final + lam * l_base).mul(w).sum() / denom
    stats["acc_final"] = float(((final.argmax(-1) == labels) & valid).sum() / n_valid)
    stats["kl_final"] = float((kl_final.detach() * w).sum() / denom)
    return loss, stats


@torch.no_grad()
def acceptance(model: DraftModel, data: DistillData, max_rows: int = 128, anchors_per_row: int = 4,
               seed: int = 1234) -> dict:
    """Held-out estimate of greedy τ (accepted proposals + 1 per block) with the real rollout
    (realized draft tokens feed the GRU), capped by the continuation length, on the greedy
    continuations only (a sampled one is not what greedy verification would accept)."""
    s = model.cfg
    n = s.default_num_proposals
    gen = torch.Generator().manual_seed(seed)
    rows = torch.nonzero(~data.sampled).flatten()[:max_rows]
    if rows.numel() == 0:
        return {"tau": None, "max_tau": None, "blocks": 0}
    model.eval()
    acc_lens, caps = [], []
    for i in range(0, len(rows), 16):
        r = rows[i:i + 16]
        anchors = sample_anchors(data, r, anchors_per_row, gen)
        anchor_ids = torch.gather(data.tokens[r], 1, anchors)
        z = model.backbone(data.feats[r].float(), anchors, anchor_ids)
        props = model.propose(z.flatten(0, 1), anchor_ids.flatten(), n)
        labels, valid = block_labels(data, r, anchors, s.block_size, True)  # x[a+1..a+B]
        labels, valid = labels.flatten(0, 1)[:, :n], valid.flatten(0, 1)[:, :n]
        ok = ((props == labels) & valid).long().cumprod(1).sum(1)
        acc_lens.append(ok)
        caps.append(valid.sum(1))
    model.train()
    acc = torch.cat(acc_lens).float()
    return {"tau": float(acc.mean() + 1), "max_tau": float(torch.cat(caps).float().mean() + 1),
            "blocks": int(acc.numel())}


@torch.no_grad()
def distribution_match(model: DraftModel, data: DistillData, max_rows: int = 128, anchors_per_row: int = 4,
                       seed: int = 4321) -> dict:
    """Held-out T=1 agreement of the drafter's q with the target's p, per proposal k (k = 0 is the
    first proposal, predicting x[a+1]): the mean ``KL(p‖q)`` and the mean ``Σ_x min(p, q)``, the
    probability that rejection sampling accepts proposal k given that its prefix was accepted.
    Teacher-forced: the prefix (and the Domino GRU's input) is the sequence's own tokens, over all
    held-out sequences (greedy and sampled); slots past a sequence's end are left out."""
    s = model.cfg
    nb, shift, n = s.block_size, s.shift_label, s.default_num_proposals
    first = 0 if shift else 1  # the slot holding proposal 0
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(min(max_rows, data.tokens.shape[0]))
    model.eval()
    kl_sum, acc_sum, cnt = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for i in range(0, len(rows), 16):
        r = rows[i:i + 16]
        anchors = sample_anchors(data, r, anchors_per_row, gen)
        base, final = draft_forward(model, data, r, anchors)
        q = (base if final is None else final)[:, :, first:first + n]
        _, valid = block_labels(data, r, anchors, nb, shift)
        valid = valid[:, :, first:first + n]
        t = TargetDist(target_logits(data, r, anchors, nb, shift, model.lm_head)[:, :, first:first + n])
        kl = kl_to_target(q, t)
        acc = torch.minimum(t.p, torch.softmax(q, -1)).sum(-1)
        kl_sum += (kl * valid).sum((0, 1))
        acc_sum += (acc * valid).sum((0, 1))
        cnt += valid.sum((0, 1))
    model.train()
    c = cnt.clamp(min=1)
    return {"temperature": 1.0, "kl_per_proposal": (kl_sum / c).tolist(),
            "accept_per_proposal": (acc_sum / c).tolist(),
            "kl": float(kl_sum.sum() / c.sum()), "accept": float(acc_sum.sum() / c.sum()),
            "slots": cnt.long().tolist()}


def _optimizer(model, r: DraftRecipe):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=r.lr, betas=(0.9, 0.95), weight_decay=r.weight_decay)


def _train_step(model, opt, data, rows, anchors, step, steps, r):
    lam = lambda_at(step, steps, r) if model.cfg.has_head else 1.0
    for g in opt.param_groups:
        g["lr"] = lr_at(step, steps, r)
    loss, stats = draft_loss(model, data, rows, anchors, lam, r)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    opt.step()
    return float(loss.detach()), lam, stats


def steps_for_budget(make_model, data, r: DraftRecipe, seconds: float, probe: int = 3) -> int:
    model = make_model()
    opt = _optimizer(model, r)
    gen = torch.Generator().manual_seed(999)
    rows = torch.arange(min(r.batch, data.tokens.shape[0]))
    anchors = sample_anchors(data, rows, r.anchors, gen)
    _train_step(model, opt, data, rows, anchors, 0, 100, r)
    t0 = time.perf_counter()
    for _ in range(probe):
        _train_step(model, opt, data, rows, anchors, 50, 100, r)
    return max(1, int(seconds / ((time.perf_counter() - t0) / probe)))


def train_draft(make_model, data: DistillData, held: DistillData, out_dir: str, *, seed: int,
                steps=None, minutes=None, recipe: DraftRecipe | None = None, log=print, log_every=25,
                data_recipe: dict | None = None):
    """Train one drafter and write it (public format) plus ``train_meta.json``: ``seed``,
    ``steps``, ``recipe`` (this ``DraftRecipe``), ``data`` (``data_recipe`` plus the training
    data's facts), ``config`` (the written ``config.json``), ``trainable_params``, ``heldout``
    (greedy ``tau`` and the T=1 ``distribution``, see :func:`distribution_match`), ``curve``,
    ``train_seconds``."""
    r = recipe or DraftRecipe()
    if steps is None:
        steps = steps_for_budget(make_model, data, r, minutes * 60)
        log(f"draft: {minutes} min budget -> {steps} steps")
    torch.manual_seed(seed)
    model = make_model()
    opt = _optimizer(model, r)
    gen = torch.Generator().manual_seed(seed)
    kind = "domino" if model.cfg.has_head else "dflash"
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"draft {kind}: {n_params / 1e6:.2f} M trainable params, {steps} steps, "
        f"{r.batch} sequences x {r.anchors} anchors")
    curve, t0 = [], time.perf_counter()
    n = data.tokens.shape[0]
    for step in range(steps):
        rows = torch.randint(0, n, (r.batch,), generator=gen)
        anchors = sample_anchors(data, rows, r.anchors, gen)
        loss, lam, stats = _train_step(model, opt, data, rows, anchors, step, steps, r)
        if step % log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": loss, "lambda": lam, **stats})
            log(f"draft {kind} step {step}/{steps} loss {loss:.3f} λ {lam:.2f} "
                + " ".join(f"{k} {v:.3f}" for k, v in stats.items())
                + f" {time.perf_counter() - t0:.0f}s")
    ev = acceptance(model, held)
    ev["distribution"] = dist = distribution_match(model, held)
    tau = "n/a" if ev["tau"] is None else f"{ev['tau']:.3f} (cap {ev['max_tau']:.2f})"
    log(f"draft {kind} held-out: greedy τ {tau} over {ev['blocks']} blocks; T=1 mean KL(p‖q) "
        f"{dist['kl']:.3f}, mean Σmin(p,q) {dist['accept']:.3f}")
    save_draft(model, out_dir)
    meta = {"seed": seed, "steps": steps, "recipe": asdict(r),
            "data": {**(data_recipe or {}), "train": data.describe(), "heldout": held.describe()},
            "config": json.load(open(os.path.join(out_dir, "config.json"))),  # as written
            "trainable_params": n_params, "heldout": ev, "curve": curve,
            "train_seconds": time.perf_counter() - t0}
    with open(os.path.join(out_dir, "train_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return model, meta


def make_draft_config(target_cfg, mask_id: int, *, domino: bool, layers: int, layer_ids, block: int,
                      gru: int, emb: int, last_layer_feature: str = FINAL_NORM) -> DraftConfig:
    """The drafter's config for a transformers target config: ``layers`` decoder layers of the
    target's shape; a Domino head (public shift_label convention) or DFlash-only (spec §3.2)."""
    shape = dataclasses.replace(Qwen3Config.from_dict(target_cfg.to_dict(), "the target's config"),
                                num_hidden_layers=layers, tie_word_embeddings=False)
    return DraftConfig(layers=shape, block_size=block, target_layer_ids=list(layer_ids),
                       mask_token_id=mask_id, projector_type="domino" if domino else None,
                       pure_draft_prefix_len=1, shift_label=domino, emb_dim=emb if domino else None,
                       gru_hidden_dim=gru if domino else None,
                       num_target_layers=target_cfg.num_hidden_layers,
                       last_layer_feature=last_layer_feature)


def model_factory(target, cfg: DraftConfig, seed: int):
    state = {k: v for k, v in target.state_dict().items()}
    embed = target.model.embed_tokens.weight
    lm_head = target.lm_head.weight

    def make():
        torch.manual_seed(seed)
        m = DraftModel(cfg, embed, lm_head)
        m.init_from_target(state, target.config.num_hidden_layers - 1)
        return m
    return make


def run_draft_stage(args, log) -> None:
    """The CLI's ``draft`` stage: distillation data, then each requested drafter."""
    from . import data as corpus
    from .target import load_target
    from .tokenizer import EOS_ID, MASK_ID, load_tokenizer

    tok = load_tokenizer(os.path.join(args.out, "tokenizer.json"))
    target = load_target(os.path.join(args.out, "target"))
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    layer_ids = [int(x) for x in str(args.target_layer_ids).split(",")]
    train_stream = corpus.encode_corpus(tok, corpus.corpus_files("train", limit=args.max_files), EOS_ID)
    held_stream = corpus.encode_corpus(tok, corpus.corpus_files("heldout", limit=args.max_files), EOS_ID)
    mk = dict(prompt_len=args.distill_prompt_len, new_tokens=args.distill_new_tokens, eos_id=EOS_ID,
              batch=args.distill_batch, log=log, last_layer_feature=args.last_layer_feature,
              sampled_frac=args.distill_sampled_frac)
    train = build_distill_data(target, train_stream, layer_ids, n_prompts=args.distill_prompts,
                               seed=args.seed, **mk)
    held = build_distill_data(target, held_stream, layer_ids, n_prompts=max(16, args.distill_prompts // 8),
                              seed=args.seed + 1, **mk)
    recipe = DraftRecipe(batch=args.draft_batch, anchors=args.anchors, lr=args.draft_lr, gamma=args.gamma,
                         kl_weight=args.kl_weight)
    data_recipe = {"prompts": args.distill_prompts, "sampled_frac": args.distill_sampled_frac,
                   "target_layer_ids": layer_ids, "last_layer_feature": args.last_layer_feature}
    steps = args.draft_steps
    for kind in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if kind not in ("domino", "dflash"):
            raise ValueError(f"--variants: unknown drafter {kind!r} (expected domino or dflash)")
        cfg = make_draft_config(target.config, MASK_ID, domino=kind == "domino",
                                layers=args.draft_layers, layer_ids=layer_ids, block=args.block_size,
                                gru=args.gru_hidden, emb=args.emb_dim,
                                last_layer_feature=args.last_layer_feature)
        # Same budget for every variant: the step count timed for the first one (the same
        # batches and anchors, since the data generator is seeded identically).
        _, meta = train_draft(model_factory(target, cfg, args.seed), train, held,
                              os.path.join(args.out, f"draft-{kind}"), seed=args.seed, steps=steps,
                              minutes=args.draft_minutes, recipe=recipe, log=log, log_every=args.log_every,
                              data_recipe=data_recipe)
        steps = meta["steps"]
