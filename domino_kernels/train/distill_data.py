"""The drafters' distillation data: corpus windows continued by the target (greedily, or for a
seeded fraction of them by sampling at T=1), the target's context features of every position and
its final post-norm hidden state, from one target pass per batch.

The final hidden state is what makes distribution distillation cheap: the target's logits at any
position are ``lm_head(final_hidden)`` (the frozen lm_head the drafters already hold), computed on
the fly for the positions a batch supervises instead of storing ``[N, L, V]`` logits. In bf16 it
costs ``N·L·H·2`` bytes (384 x 160 x 256 x 2 = 31 MB for the default stage), the same as one more
captured layer.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.config import FINAL_NORM, RESIDUAL, check_last_layer_feature

SAMPLED_TEMPERATURE = 1.0  # the temperature the sampled continuations are drawn at


@dataclass
class DistillData:
    tokens: torch.Tensor        # [N, L] prompt + continuation
    feats: torch.Tensor         # [N, L, nT*H] bf16 target features
    final_hidden: torch.Tensor  # [N, L, H] bf16 target's final post-norm hidden state
    prompt_len: int
    valid_len: torch.Tensor     # [N] tokens up to and including the first eos of the continuation
    sampled: torch.Tensor       # [N] bool: continuation sampled at T=1 (else greedy)

    def describe(self) -> dict:
        """The data's recipe facts for ``train_meta.json``."""
        return {"sequences": int(self.tokens.shape[0]), "prompt_len": self.prompt_len,
                "new_tokens": int(self.tokens.shape[1]) - self.prompt_len,
                "sampled_sequences": int(self.sampled.sum()),
                "sampled_temperature": SAMPLED_TEMPERATURE}


def capture_target(target, ids: torch.Tensor, layer_ids, last_layer_feature: str = FINAL_NORM):
    """One target pass over ``ids [b, L]``: ``(features, final_hidden)``. ``features`` concatenates
    ``hidden_states[i + 1]`` for ``i`` in ``layer_ids`` (for the last layer the final norm's output,
    or its raw residual stream when ``last_layer_feature == "residual"``); ``final_hidden`` is the
    post-norm state the target's lm_head reads."""
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
            out = target.model(input_ids=ids, output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()
    states = out.hidden_states
    feats = torch.cat([raw[i] if i in raw else states[i + 1] for i in layer_ids], dim=-1)
    return feats, out.last_hidden_state


def capture_features(target, ids: torch.Tensor, layer_ids, last_layer_feature: str = FINAL_NORM) -> torch.Tensor:
    """The context features of :func:`capture_target` alone."""
    return capture_target(target, ids, layer_ids, last_layer_feature)[0]


@torch.no_grad()
def continue_target(target, prompts: torch.Tensor, new_tokens: int, sampled: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
    """Continue ``prompts [b, P]`` by ``new_tokens`` with the target's KV cache: rows where
    ``sampled [b]`` is true draw each token from the target's softmax at T=1 (``gen``), the others
    take the argmax. No stopping: sequences past their eos are cut by ``valid_len``. With no
    sampled row the generator is never drawn from."""
    from transformers import DynamicCache

    # transformers >= 5.24 renamed the cache argument ``past_key_values`` to ``cache``.
    kw = "cache" if "cache" in inspect.signature(target.forward).parameters else "past_key_values"
    cache = DynamicCache()
    any_sampled = bool(sampled.any())

    def pick(logits):
        nxt = logits.argmax(-1, keepdim=True)
        if any_sampled:
            probs = torch.softmax(logits[sampled].float() / SAMPLED_TEMPERATURE, dim=-1)
            nxt[sampled] = torch.multinomial(probs, 1, generator=gen)
        return nxt

    out = target(input_ids=prompts, use_cache=True, **{kw: cache})
    nxt = pick(out.logits[:, -1])
    seq = [prompts, nxt]
    for _ in range(new_tokens - 1):
        out = target(input_ids=nxt, use_cache=True, **{kw: cache})
        nxt = pick(out.logits[:, -1])
        seq.append(nxt)
    return torch.cat(seq, dim=1)


def sampled_rows(n: int, frac: float) -> torch.Tensor:
    """``[n]`` bool, true for an evenly spread ``round``-down share ``frac`` of the rows (row i is
    sampled iff ``floor((i+1)·frac) > floor(i·frac)``): every generation batch gets its share."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"sampled_frac (--distill-sampled-frac) must be in [0, 1], got {frac}")
    i = torch.arange(n, dtype=torch.float64)
    return torch.floor((i + 1) * frac) > torch.floor(i * frac)


def build_distill_data(target, stream: torch.Tensor, layer_ids, *, n_prompts: int, prompt_len: int,
                       new_tokens: int, seed: int, eos_id: int, batch: int = 64, log=print,
                       last_layer_feature: str = FINAL_NORM, sampled_frac: float = 0.0) -> DistillData:
    """``n_prompts`` seeded corpus windows of ``prompt_len`` tokens, continued by the target
    (a ``sampled_frac`` share by T=1 sampling, the rest greedily), with the target's features and
    final hidden states. Deterministic given ``seed``."""
    sampled = sampled_rows(n_prompts, sampled_frac)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - prompt_len, (n_prompts,), generator=gen)
    prompts = stream[starts[:, None] + torch.arange(prompt_len)].long()
    toks, feats, finals = [], [], []
    t0 = time.perf_counter()
    for i in range(0, n_prompts, batch):
        seq = continue_target(target, prompts[i:i + batch], new_tokens, sampled[i:i + batch], gen)
        f, h = capture_target(target, seq, layer_ids, last_layer_feature)
        toks.append(seq)
        feats.append(f.to(torch.bfloat16))
        finals.append(h.to(torch.bfloat16))
        log(f"distill data: {min(i + batch, n_prompts)}/{n_prompts} sequences "
            f"({int(sampled[:i + batch].sum())} sampled, {time.perf_counter() - t0:.0f}s)")
    tokens = torch.cat(toks)
    cont = tokens[:, prompt_len:]
    is_eos = cont == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1,
                        torch.full_like(is_eos[:, 0], new_tokens, dtype=torch.long))
    return DistillData(tokens, torch.cat(feats), torch.cat(finals), prompt_len, prompt_len + first, sampled)


def target_logits(data: DistillData, rows, anchors, block: int, shift: bool, lm_head: torch.Tensor):
    """The target's logits ``[b, A, B, V]`` (fp32) for the token each block slot predicts: slot j
    predicts x[a+j+1] when ``shift`` (the target's logits at position a+j), else x[a+j] (at
    a+j-1; slot 0, unsupervised, reads position a-1 ≥ 0). Positions past the sequence clamp; their
    slots are never supervised."""
    hid = data.final_hidden[rows]
    j = torch.arange(block)
    pos = (anchors[:, :, None] + j - (0 if shift else 1)).clamp(0, hid.shape[1] - 1)
    h = torch.gather(hid, 1, pos.view(len(rows), -1, 1).expand(-1, -1, hid.shape[-1]))
    return F.linear(h.float(), lm_head).view(*pos.shape, -1)
