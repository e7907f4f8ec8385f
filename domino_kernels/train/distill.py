"""Distil drafters from the target's own greedy continuations (spec §6, at laptop scale).

Data: prompts are windows of the training corpus; the target continues each greedily. A block
is anchored at a position ``a`` whose following tokens are all target-greedy continuation, so
every label is what the target itself would emit after the committed prefix: exactly what a
drafter is asked to predict at decode time. Context features of ``target_layer_ids`` are
Hugging Face ``hidden_states[id + 1]``, as in the training reference (SpecForge): the residual-stream
output of layer ``id``, except that for the target's last layer it is the final norm's output
(``last_layer_feature="residual"`` takes the raw residual stream there instead, vLLM's choice).

Loss (Domino, shift_label=true): slot j of the block anchored at a predicts x[a+j+1];
``L = (1-λ)·CE(base + correction) + λ·CE(base)``, λ linear from 1 to 0 over the run (the
base-anchored curriculum), per-slot weights ``exp(-max(j - offset, 0)/γ)`` (offset 0), the GRU
reading the ground-truth tokens x[a..a+B-1] (teacher forcing). DFlash-only (shift_label=false):
slot j predicts x[a+j] for j ≥ 1, slot 0 unsupervised, offset 1, loss CE(base).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..model.config import FINAL_NORM, RESIDUAL, DraftConfig, Qwen3Config, check_last_layer_feature
from .draft_model import DraftModel, save_draft
from .schedule import Schedule, lr_at


@dataclass
class DistillData:
    tokens: torch.Tensor      # [N, L] prompt + greedy continuation
    feats: torch.Tensor       # [N, L, nT*H] bf16 target features
    prompt_len: int
    valid_len: torch.Tensor   # [N] tokens up to and including the first eos of the continuation


def capture_features(target, ids: torch.Tensor, layer_ids, last_layer_feature: str = FINAL_NORM) -> torch.Tensor:
    """Concatenated context features of ``layer_ids`` for ``ids [b, L]``: ``hidden_states[i + 1]``
    of the target (for its last layer, the final norm's output), or for the last layer the raw
    residual stream of that layer when ``last_layer_feature == "residual"``."""
    check_last_layer_feature(last_layer_feature)
    last = target.config.num_hidden_layers - 1
    raw = {}
    hook = None
    if last_layer_feature == RESIDUAL and last in layer_ids:
        def keep(_m, _inp, out):
            raw[last] = out[0] if isinstance(out, tuple) else out
        hook = target.model.layers[last].register_forward_hook(keep)
    try:
        with torch.no_grad():
            states = target.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat([raw[i] if i in raw else states[i + 1] for i in layer_ids], dim=-1)


@torch.no_grad()
def greedy_continue(target, prompts: torch.Tensor, new_tokens: int, eos_id: int) -> torch.Tensor:
    """Greedy continuation with the target's KV cache (no sampling, no stopping: sequences past
    their eos are cut by ``valid_len``)."""
    import inspect

    from transformers import DynamicCache

    # transformers >= 5.24 renamed the cache argument ``past_key_values`` to ``cache``.
    kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
    cache = DynamicCache()
    out = target(input_ids=prompts, use_cache=True, **{kw: cache})
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    seq = [prompts, nxt]
    for _ in range(new_tokens - 1):
        out = target(input_ids=nxt, use_cache=True, **{kw: cache})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        seq.append(nxt)
    return torch.cat(seq, dim=1)


def build_distill_data(target, stream: torch.Tensor, layer_ids, *, n_prompts: int, prompt_len: int,
                       new_tokens: int, seed: int, eos_id: int, batch: int = 64, log=print,
                       last_layer_feature: str = FINAL_NORM) -> DistillData:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - prompt_len, (n_prompts,), generator=gen)
    prompts = stream[starts[:, None] + torch.arange(prompt_len)].long()
    toks, feats = [], []
    t0 = time.perf_counter()
    for i in range(0, n_prompts, batch):
        seq = greedy_continue(target, prompts[i:i + batch], new_tokens, eos_id)
        toks.append(seq)
        feats.append(capture_features(target, seq, layer_ids, last_layer_feature).to(torch.bfloat16))
        log(f"distill data: {min(i + batch, n_prompts)}/{n_prompts} sequences "
            f"({time.perf_counter() - t0:.0f}s)")
    tokens = torch.cat(toks)
    cont = tokens[:, prompt_len:]
    is_eos = cont == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], new_tokens,
                                                                                    dtype=torch.long))
    return DistillData(tokens, torch.cat(feats), prompt_len, prompt_len + first)


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


def sample_anchors(data: DistillData, rows: torch.Tensor, n_anchors: int, gen: torch.Generator) -> torch.Tensor:
    """``[b, A]`` anchor positions per sequence, drawn independently for each sequence from
    ``[prompt_len-1, valid_len-2]`` (the anchor's next token is a greedy continuation token)."""
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


def draft_loss(model: DraftModel, data: DistillData, rows, anchors, lam: float, r: DraftRecipe):
    """The curriculum loss and per-path accuracies (weighted by validity only)."""
    s = model.cfg
    nb, shift = s.block_size, s.shift_label
    feats = data.feats[rows].float()
    anchor_ids = torch.gather(data.tokens[rows], 1, anchors)
    z = model.backbone(feats, anchors, anchor_ids)
    base = model.base_logits(z)
    labels, valid = block_labels(data, rows, anchors, nb, shift)
    w = slot_weights(nb, r.gamma, 0 if shift else 1)[None, None] * valid
    denom = w.sum().clamp(min=1e-6)
    ce_base = F.cross_entropy(base.flatten(0, 2), labels.flatten(), reduction="none").view_as(w)
    stats = {"acc_base": float(((base.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1))}
    if not s.has_head:
        return (ce_base * w).sum() / denom, stats
    corr = model.correction(z, gru_inputs(data, rows, anchors, nb))
    prefix = torch.arange(nb) < s.pure_draft_prefix_len  # the first P slots use base logits only
    final = base + corr * (~prefix)[None, None, :, None]
    ce_final = F.cross_entropy(final.flatten(0, 2), labels.flatten(), reduction="none").view_as(w)
    loss = ((1 - lam) * ce_final + lam * ce_base).mul(w).sum() / denom
    stats["acc_final"] = float(((final.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1))
    return loss, stats


@torch.no_grad()
def acceptance(model: DraftModel, data: DistillData, max_rows: int = 128, anchors_per_row: int = 4,
               seed: int = 1234) -> dict:
    """Held-out estimate of τ (accepted proposals + 1 per greedy block) with the real rollout
    (realized draft tokens feed the GRU), capped by the continuation length."""
    model.eval()
    s = model.cfg
    n = s.default_num_proposals
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(min(max_rows, data.tokens.shape[0]))
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
                steps=None, minutes=None, recipe: DraftRecipe | None = None, log=print, log_every=25):
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
    log(f"draft {kind} held-out: τ {ev['tau']:.3f} (cap {ev['max_tau']:.2f}) over {ev['blocks']} blocks")
    save_draft(model, out_dir)
    meta = {"seed": seed, "steps": steps, "recipe": asdict(r), "config": model.cfg.to_dict(),
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
              batch=args.distill_batch, log=log, last_layer_feature=args.last_layer_feature)
    train = build_distill_data(target, train_stream, layer_ids, n_prompts=args.distill_prompts,
                               seed=args.seed, **mk)
    held = build_distill_data(target, held_stream, layer_ids, n_prompts=max(16, args.distill_prompts // 8),
                              seed=args.seed + 1, **mk)
    recipe = DraftRecipe(batch=args.draft_batch, anchors=args.anchors, lr=args.draft_lr, gamma=args.gamma)
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
                              minutes=args.draft_minutes, recipe=recipe, log=log, log_every=args.log_every)
        steps = meta["steps"]
