"""Train the small Qwen3 target (transformers' ``Qwen3ForCausalLM``) and save it in the Hugging
Face layout (config.json + model.safetensors + generation_config.json + tokenizer.json).

Determinism: weights, batches and the schedule depend only on ``seed`` and ``steps``. When only a
time budget is given, ``steps`` is chosen by timing a few warm-up steps (on a throwaway copy of
the model) and recorded in ``train_meta.json``, so a run can be repeated exactly with --steps.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..model.config import Qwen3Config
from .schedule import Schedule, lr_at
from .tokenizer import EOS_ID


def target_shape(**shape) -> Qwen3Config:
    """The trained target's shape: ``shape`` over the laptop-scale defaults (RoPE θ 1e4, 2048
    positions, tied embeddings, the tokenizer's end-of-text id as bos and eos)."""
    base = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True,
                eos_token_ids=[EOS_ID], bos_token_id=EOS_ID)
    return Qwen3Config(**{**base, **shape})


@dataclass
class TargetRecipe(Schedule):
    seq_len: int = 256
    batch_size: int = 16


def make_config(shape: Qwen3Config):
    """The transformers config of ``shape`` (bos = eos = pad: the tokenizer's single special)."""
    from transformers import Qwen3Config as HFQwen3Config

    if shape.eos_token_ids != [shape.bos_token_id]:
        raise ValueError(f"the target's eos ids {shape.eos_token_ids} must be [bos_token_id] "
                         f"([{shape.bos_token_id}]): one end-of-text id serves as bos, eos and pad")
    return HFQwen3Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim, max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta, tie_word_embeddings=shape.tie_word_embeddings,
        rms_norm_eps=shape.rms_norm_eps, attention_bias=False, hidden_act="silu",
        bos_token_id=shape.bos_token_id, eos_token_id=shape.bos_token_id,
        pad_token_id=shape.bos_token_id, use_sliding_window=False, attn_implementation="sdpa")


def build_model(shape: Qwen3Config, seed: int):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(make_config(shape))
    return model


def _optimizer(model, r: TargetRecipe):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=r.lr, betas=(0.9, 0.95), eps=1e-8)


def _step(model, opt, batch, lr, r: TargetRecipe) -> float:
    for g in opt.param_groups:
        g["lr"] = lr
    out = model(input_ids=batch, labels=batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    opt.step()
    return float(out.loss.detach())


def steps_for_budget(shape: Qwen3Config, r: TargetRecipe, sampler, seconds: float, probe: int = 4) -> int:
    """How many steps fit in ``seconds``: time ``probe`` steps of a throwaway model (after one
    untimed step), so the real run's RNG streams are untouched."""
    model = build_model(shape, seed=12345)
    opt = _optimizer(model, r)
    batch = sampler.stream[: r.batch_size * r.seq_len].long().view(r.batch_size, r.seq_len)
    _step(model, opt, batch, r.lr, r)
    t0 = time.perf_counter()
    for _ in range(probe):
        _step(model, opt, batch, r.lr, r)
    per = (time.perf_counter() - t0) / probe
    return max(1, int(seconds / per))


@torch.no_grad()
def evaluate(model, stream: torch.Tensor, seq_len: int, max_windows: int = 64) -> dict:
    """Mean next-token loss and top-1 accuracy over non-overlapping windows of ``stream``."""
    model.eval()
    n = min(max_windows, (stream.numel() - 1) // seq_len)
    tot_loss, tot_acc, cnt = 0.0, 0.0, 0
    for i in range(0, n, 8):
        rows = [stream[j * seq_len:(j + 1) * seq_len].long() for j in range(i, min(n, i + 8))]
        x = torch.stack(rows)
        logits = model(input_ids=x).logits[:, :-1]
        y = x[:, 1:]
        tot_loss += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                            y.reshape(-1), reduction="sum"))
        tot_acc += float((logits.argmax(-1) == y).sum())
        cnt += y.numel()
    model.train()
    return {"loss": tot_loss / max(cnt, 1), "acc": tot_acc / max(cnt, 1), "tokens": cnt}


def train_target(train_stream, heldout_stream, out_dir: str, *, seed: int, steps: int | None = None,
                 minutes: float | None = None, shape: Qwen3Config | None = None,
                 recipe: TargetRecipe | None = None, tokenizer_path: str | None = None,
                 log=print, log_every: int = 50):
    from .data import WindowSampler

    shape = shape or target_shape()
    r = recipe or TargetRecipe()
    sampler = WindowSampler(train_stream, r.seq_len, seed)
    if steps is None:
        if minutes is None:
            raise ValueError("give steps or minutes")
        steps = steps_for_budget(shape, r, sampler, minutes * 60)
        log(f"target: {minutes} min budget -> {steps} steps")
    model = build_model(shape, seed)
    model.train()
    opt = _optimizer(model, r)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"target: {n_params / 1e6:.2f} M params, {steps} steps of {r.batch_size}x{r.seq_len} tokens")
    curve, t0, ema = [], time.perf_counter(), None
    for step in range(steps):
        loss = _step(model, opt, sampler.batch(r.batch_size), lr_at(step, steps, r), r)
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        if step % log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": loss, "loss_ema": ema})
            log(f"target step {step}/{steps} loss {loss:.3f} (ema {ema:.3f}) "
                f"{time.perf_counter() - t0:.0f}s")
    ev = evaluate(model, heldout_stream, r.seq_len)
    log(f"target held-out: loss {ev['loss']:.3f} acc {ev['acc']:.3f} over {ev['tokens']} tokens")
    save_target(model, out_dir, tokenizer_path)
    meta = {"seed": seed, "steps": steps, "shape": shape.to_dict(), "recipe": asdict(r),
            "params": n_params, "heldout": ev, "curve": curve,
            "train_seconds": time.perf_counter() - t0}
    with open(os.path.join(out_dir, "train_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return model, meta


def save_target(model, out_dir: str, tokenizer_path: str | None = None, dtype=torch.bfloat16):
    """Hugging Face layout, weights in ``dtype`` (bf16 halves the shipped size)."""
    import shutil

    os.makedirs(out_dir, exist_ok=True)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))


def load_target(path: str, dtype=torch.float32):
    from transformers import Qwen3ForCausalLM

    return Qwen3ForCausalLM.from_pretrained(path, dtype=dtype)
