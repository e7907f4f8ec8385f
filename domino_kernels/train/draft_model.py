"""A trainable DFlash backbone (spec §2) with an optional Domino head (spec §3), and its writer in
the public draft format (spec §7).

Training runs many blocks of one sequence in one pass: the sequence's context features
``[S, nT*H]`` become per-layer context K/V once, and the ``A`` blocks (anchor + B-1 mask slots
each) attend to context keys strictly before their own anchor plus every key of their own block
(bidirectionally). Sequences are short, so the mask is an explicit boolean tensor (no
FlexAttention). The target's embedding and lm_head are frozen buffers, never saved with the draft.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.config import FINAL_NORM


@dataclass
class DraftSpec:
    """The drafter's shape. ``hidden_size``, heads and vocab follow the target."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    target_layer_ids: list
    num_target_layers: int
    mask_token_id: int
    block_size: int = 16
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    domino: bool = True              # False: DFlash-only (no head, shift_label=false)
    emb_dim: int = 64
    gru_hidden_dim: int = 256
    pure_draft_prefix_len: int = 1
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)
    # The feature of the target's last layer, if captured: "final_norm" (HF hidden_states[L], the
    # reference) or "residual" (written to the config as dflash_config.last_layer_feature).
    last_layer_feature: str = FINAL_NORM

    @property
    def shift_label(self) -> bool:
        """Domino drafts use the public Qwen3 convention (slot j predicts s+j+1); DFlash-only
        drafts use DFlash's (slot j predicts s+j, slot 0 unused). Spec §3.2."""
        return self.domino


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """Default RoPE, rotate-half form (as Hugging Face Qwen3), fp32 angles."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [b, heads, n, d]``, ``cos/sin [b, n, d]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, s: DraftSpec):
        super().__init__()
        h, d = s.hidden_size, s.head_dim
        self.nq, self.nkv, self.d = s.num_attention_heads, s.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.nq * d, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * d, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * d, bias=False)
        self.o_proj = nn.Linear(self.nq * d, h, bias=False)
        self.q_norm = nn.RMSNorm(d, eps=s.rms_norm_eps)
        self.k_norm = nn.RMSNorm(d, eps=s.rms_norm_eps)

    def _heads(self, x, n_heads):
        b, n, _ = x.shape
        return x.view(b, n, n_heads, self.d).transpose(1, 2)

    def context_kv(self, ctx, cos, sin):
        """K/V of context features: k_proj → k_norm → RoPE; v_proj; no input_layernorm (§2.2)."""
        k = apply_rope(self.k_norm(self._heads(self.k_proj(ctx), self.nkv)), cos, sin)
        return k, self._heads(self.v_proj(ctx), self.nkv)

    def forward(self, u, cos, sin, kc, vc, mask):
        """Block queries ``u [b, n, H]`` (already input-normed) over ``[context ; block]`` keys."""
        q = apply_rope(self.q_norm(self._heads(self.q_proj(u), self.nq)), cos, sin)
        kb = apply_rope(self.k_norm(self._heads(self.k_proj(u), self.nkv)), cos, sin)
        vb = self._heads(self.v_proj(u), self.nkv)
        k, v = torch.cat([kc, kb], dim=2), torch.cat([vc, vb], dim=2)
        rep = self.nq // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        b, _, n, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, self.nq * self.d))


class MLP(nn.Module):
    def __init__(self, s: DraftSpec):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, s: DraftSpec):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(s.hidden_size, eps=s.rms_norm_eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = nn.RMSNorm(s.hidden_size, eps=s.rms_norm_eps)
        self.mlp = MLP(s)

    def forward(self, x, cos, sin, kc, vc, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kc, vc, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def block_mask(anchors: torch.Tensor, ctx_len: int, block_size: int) -> torch.Tensor:
    """``[b, A*B, S + A*B]`` boolean (True = may attend): context key p is visible to a query of
    the block anchored at ``a`` iff ``p < a``; block keys only within the same block."""
    b, a = anchors.shape
    n = a * block_size
    q_anchor = anchors.repeat_interleave(block_size, dim=1)                     # [b, n]
    ctx = torch.arange(ctx_len)[None, None, :] < q_anchor[:, :, None]           # [b, n, S]
    blk_id = torch.arange(n) // block_size
    own = (blk_id[:, None] == blk_id[None, :]).expand(b, n, n)
    return torch.cat([ctx, own], dim=-1)


class DraftModel(nn.Module):
    """DFlash backbone + (when ``spec.domino``) Domino head. ``embed``/``lm_head`` are the target's
    frozen matrices (registered as buffers: no gradient, not part of the saved draft)."""

    def __init__(self, spec: DraftSpec, embed: torch.Tensor, lm_head: torch.Tensor):
        super().__init__()
        self.spec = s = spec
        h = s.hidden_size
        self.register_buffer("embed", embed.detach().float().clone(), persistent=False)
        self.register_buffer("lm_head", lm_head.detach().float().clone(), persistent=False)
        self.fc = nn.Linear(len(s.target_layer_ids) * h, h, bias=False)
        self.hidden_norm = nn.RMSNorm(h, eps=s.rms_norm_eps)
        self.layers = nn.ModuleList(Layer(s) for _ in range(s.num_hidden_layers))
        self.norm = nn.RMSNorm(h, eps=s.rms_norm_eps)
        if s.domino:
            g, e = s.gru_hidden_dim, s.emb_dim
            self.prefix_gru = nn.GRU(h, g, num_layers=1, bias=False, batch_first=True)
            self.embed_proj = nn.Sequential(nn.Linear(h + g, e, bias=False), nn.SiLU(),
                                            nn.Linear(e, s.vocab_size, bias=False))
            # The correction starts at zero, so the head begins as pure DFlash (and λ=1 early on
            # trains only the base path anyway).
            nn.init.zeros_(self.embed_proj[2].weight)

    # -- backbone -----------------------------------------------------------------------------
    def backbone(self, feats: torch.Tensor, anchors: torch.Tensor, anchor_ids: torch.Tensor) -> torch.Tensor:
        """``feats [b, S, nT*H]`` target features of positions 0..S-1, ``anchors [b, A]`` anchor
        positions, ``anchor_ids [b, A]`` the anchor tokens. Returns ``z [b, A, B, H]`` (normed)."""
        s = self.spec
        b, slen, _ = feats.shape
        nb = s.block_size
        a = anchors.shape[1]
        ctx = self.hidden_norm(self.fc(feats))
        ccos, csin = rope_cos_sin(torch.arange(slen).expand(b, slen), s.head_dim, s.rope_theta)
        ids = torch.full((b, a, nb), s.mask_token_id, dtype=torch.long)
        ids[:, :, 0] = anchor_ids
        x = self.embed[ids.view(b, a * nb)]
        pos = (anchors[:, :, None] + torch.arange(nb)).view(b, a * nb)
        cos, sin = rope_cos_sin(pos, s.head_dim, s.rope_theta)
        mask = block_mask(anchors, slen, nb)
        for layer in self.layers:
            kc, vc = layer.self_attn.context_kv(ctx, ccos, csin)
            x = layer(x, cos, sin, kc, vc, mask)
        return self.norm(x).view(b, a, nb, -1)

    def base_logits(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, self.lm_head)

    # -- Domino head ----------------------------------------------------------------------------
    def correction(self, z: torch.Tensor, gru_in_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced correction ``[..., B, V]`` for every slot: the GRU (h0 = 0 per block)
        reads ``emb(gru_in_ids)`` and slot j pairs ``z_j`` with the state after input j."""
        lead = z.shape[:-2]
        nb, h = z.shape[-2], z.shape[-1]
        gin = self.embed[gru_in_ids.reshape(-1, nb)]
        out, _ = self.prefix_gru(gin)
        hz = torch.cat([z.reshape(-1, nb, h), out], dim=-1)
        return self.embed_proj(hz).view(*lead, nb, -1)

    def gru_cell(self, x: torch.Tensor, hstate: torch.Tensor) -> torch.Tensor:
        """One bias-free GRU step, gate order (r, z, n) as torch.nn.GRU (spec §3.1)."""
        g = self.spec.gru_hidden_dim
        gi = F.linear(x, self.prefix_gru.weight_ih_l0)
        gh = F.linear(hstate, self.prefix_gru.weight_hh_l0)
        r = torch.sigmoid(gi[..., :g] + gh[..., :g])
        u = torch.sigmoid(gi[..., g:2 * g] + gh[..., g:2 * g])
        n = torch.tanh(gi[..., 2 * g:] + r * gh[..., 2 * g:])
        return (1 - u) * n + u * hstate

    @torch.no_grad()
    def propose(self, z: torch.Tensor, anchor_ids: torch.Tensor, n: int) -> torch.Tensor:
        """Greedy chain of ``n`` proposals per block (spec §3.3, O(N) GRU steps): ``z [m, B, H]``,
        ``anchor_ids [m]`` → ``[m, n]``. Used for held-out acceptance estimates."""
        s = self.spec
        zz = z[:, :n] if s.shift_label else z[:, 1:n + 1]
        base = self.base_logits(zz)
        if not s.domino:
            return base.argmax(-1)
        hstate = self.gru_cell(self.embed[anchor_ids], z.new_zeros(z.shape[0], s.gru_hidden_dim))
        out = []
        for i in range(n):
            logits = base[:, i]
            if i >= s.pure_draft_prefix_len:
                logits = logits + self.embed_proj(torch.cat([zz[:, i], hstate], dim=-1))
            y = logits.argmax(-1)
            out.append(y)
            if i + 1 < n:
                hstate = self.gru_cell(self.embed[y], hstate)
        return torch.stack(out, dim=1)

    # -- initialisation from the target ---------------------------------------------------------
    @torch.no_grad()
    def init_from_target(self, target_state: dict, last_layer: int) -> None:
        """Start every draft layer as a copy of the target's last decoder layer and the final norm
        as the target's, and make ``fc`` start as the identity on the deepest captured layer's
        features. A warm start for tiny budgets."""
        for layer in self.layers:
            for name, p in layer.named_parameters():
                p.copy_(target_state[f"model.layers.{last_layer}.{name}"].float())
        self.norm.weight.copy_(target_state["model.norm.weight"].float())
        h = self.spec.hidden_size
        nn.init.normal_(self.fc.weight, std=0.02 / len(self.spec.target_layer_ids) ** 0.5)
        self.fc.weight[:, -h:] += torch.eye(h)

    # -- public format --------------------------------------------------------------------------
    def draft_state_dict(self) -> dict:
        """The draft's own tensors with the public flat names (spec §7.2)."""
        return {k: v for k, v in self.state_dict().items()}

    def config_dict(self, dtype: str = "bfloat16") -> dict:
        s = self.spec
        dfc = {"target_layer_ids": list(s.target_layer_ids), "mask_token_id": s.mask_token_id,
               "shift_label": s.shift_label}
        if s.domino:
            dfc.update({"projector_type": "domino", "pure_draft_prefix_len": s.pure_draft_prefix_len,
                        "emb_dim": s.emb_dim, "gru_hidden_dim": s.gru_hidden_dim})
        if s.last_layer_feature != FINAL_NORM:  # the reference meaning needs no key
            dfc["last_layer_feature"] = s.last_layer_feature
        cfg = {
            "architectures": ["DominoDraftModel" if s.domino else "DFlashDraftModel"],
            "model_type": "qwen3", "block_size": s.block_size, "num_target_layers": s.num_target_layers,
            "num_hidden_layers": s.num_hidden_layers, "hidden_size": s.hidden_size,
            "intermediate_size": s.intermediate_size, "num_attention_heads": s.num_attention_heads,
            "num_key_value_heads": s.num_key_value_heads, "head_dim": s.head_dim, "hidden_act": "silu",
            "attention_bias": False, "rms_norm_eps": s.rms_norm_eps, "rope_theta": s.rope_theta,
            "rope_scaling": None, "max_position_embeddings": s.max_position_embeddings,
            "layer_types": ["full_attention"] * s.num_hidden_layers, "use_sliding_window": False,
            "sliding_window": None, "vocab_size": s.vocab_size, "tie_word_embeddings": False,
            "dtype": dtype, "bos_token_id": s.bos_token_id, "eos_token_id": s.eos_token_id,
            "dflash_config": dfc,
        }
        if s.domino:
            cfg["emb_dim"] = s.emb_dim  # duplicated at the top level like the public configs
        cfg.update(s.extra)
        return cfg


def save_draft(model: DraftModel, out_dir: str, dtype=torch.bfloat16) -> dict:
    """Write ``config.json`` + ``model.safetensors`` (weights in ``dtype``). Returns the tensors."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.draft_state_dict().items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    name = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.config_dict(name), f, indent=1)
    return tensors
