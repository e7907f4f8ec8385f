"""A trainable DFlash backbone (spec §2) with an optional Domino head (spec §3), and its writer in
the public draft format (spec §7). Its shape is the decode layer's ``DraftConfig`` (which owns the
format in both directions), its RoPE the decode layer's ``Rope``, and its greedy proposals the
reference rollout (``domino_kernels.reference.rollout``).

Training runs many blocks of one sequence in one pass: the sequence's context features
``[S, nT*H]`` become per-layer context K/V once, and the ``A`` blocks (anchor + B-1 mask slots
each) attend to context keys strictly before their own anchor plus every key of their own block
(bidirectionally). Sequences are short, so the mask is an explicit boolean tensor (no
FlexAttention). The target's embedding and lm_head are frozen buffers, never saved with the draft.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.config import DraftConfig, Qwen3Config
from ..model.qwen3 import Rope
from ..reference.rollout import rollout as reference_rollout


class Attention(nn.Module):
    """Attention of a draft layer; ``cos``/``sin`` arrive shaped ``[b, 1, n, d]`` (one head axis)."""

    def __init__(self, s: Qwen3Config):
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
        k = Rope.apply(self.k_norm(self._heads(self.k_proj(ctx), self.nkv)), cos, sin)
        return k, self._heads(self.v_proj(ctx), self.nkv)

    def forward(self, u, cos, sin, kc, vc, mask):
        """Block queries ``u [b, n, H]`` (already input-normed) over ``[context ; block]`` keys."""
        q = Rope.apply(self.q_norm(self._heads(self.q_proj(u), self.nq)), cos, sin)
        kb = Rope.apply(self.k_norm(self._heads(self.k_proj(u), self.nkv)), cos, sin)
        vb = self._heads(self.v_proj(u), self.nkv)
        k, v = torch.cat([kc, kb], dim=2), torch.cat([vc, vb], dim=2)
        rep = self.nq // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        b, _, n, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, self.nq * self.d))


class MLP(nn.Module):
    def __init__(self, s: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """A Qwen3 decoder layer of shape ``s`` (a ``Qwen3Config``)."""

    def __init__(self, s: Qwen3Config):
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
    """DFlash backbone + (when ``cfg.has_head``) Domino head. ``embed``/``lm_head`` are the target's
    frozen matrices (registered as buffers: no gradient, not part of the saved draft)."""

    def __init__(self, cfg: DraftConfig, embed: torch.Tensor, lm_head: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        s = cfg.layers
        h = s.hidden_size
        self.rope = Rope(s.head_dim, s.rope_theta, "cpu")
        self.register_buffer("embed", embed.detach().float().clone(), persistent=False)
        self.register_buffer("lm_head", lm_head.detach().float().clone(), persistent=False)
        self.fc = nn.Linear(len(cfg.target_layer_ids) * h, h, bias=False)
        self.hidden_norm = nn.RMSNorm(h, eps=s.rms_norm_eps)
        self.layers = nn.ModuleList(Layer(s) for _ in range(s.num_hidden_layers))
        self.norm = nn.RMSNorm(h, eps=s.rms_norm_eps)
        if cfg.has_head:
            g, e = cfg.gru_hidden_dim, cfg.emb_dim
            self.prefix_gru = nn.GRU(h, g, num_layers=1, bias=False, batch_first=True)
            self.embed_proj = nn.Sequential(nn.Linear(h + g, e, bias=False), nn.SiLU(),
                                            nn.Linear(e, s.vocab_size, bias=False))
            # The correction starts at zero, so the head begins as pure DFlash (and λ=1 early on
            # trains only the base path anyway).
            nn.init.zeros_(self.embed_proj[2].weight)

    # -- backbone -----------------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor):
        """cos/sin ``[b, 1, n, d]`` for positions ``[b, n]`` (broadcast over the head axis)."""
        cos, sin = self.rope.angles(positions)
        return cos[:, None], sin[:, None]

    def backbone(self, feats: torch.Tensor, anchors: torch.Tensor, anchor_ids: torch.Tensor) -> torch.Tensor:
        """``feats [b, S, nT*H]`` target features of positions 0..S-1, ``anchors [b, A]`` anchor
        positions, ``anchor_ids [b, A]`` the anchor tokens. Returns ``z [b, A, B, H]`` (normed)."""
        b, slen, _ = feats.shape
        nb = self.cfg.block_size
        a = anchors.shape[1]
        ctx = self.hidden_norm(self.fc(feats))
        ccos, csin = self._rope(torch.arange(slen).expand(b, slen))
        ids = torch.full((b, a, nb), self.cfg.mask_token_id, dtype=torch.long)
        ids[:, :, 0] = anchor_ids
        x = self.embed[ids.view(b, a * nb)]
        cos, sin = self._rope((anchors[:, :, None] + torch.arange(nb)).view(b, a * nb))
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

    @torch.no_grad()
    def propose(self, z: torch.Tensor, anchor_ids: torch.Tensor, n: int) -> torch.Tensor:
        """Greedy chain of ``n`` proposals per block (spec §3.3): ``z [m, B, H]``, ``anchor_ids [m]``
        → ``[m, n]``; the reference rollout with this model's head. Used for held-out acceptance."""
        c = self.cfg
        base = self.base_logits(z[:, :n] if c.shift_label else z[:, 1:n + 1])
        if not c.has_head:
            return base.argmax(-1)
        tokens, _, _ = reference_rollout(
            z, base, anchor_ids, self.prefix_gru.weight_ih_l0, self.prefix_gru.weight_hh_l0,
            self.embed_proj[0].weight, self.embed_proj[2].weight, self.embed, num_proposals=n,
            shift_label=c.shift_label, pure_prefix_len=c.pure_draft_prefix_len)
        return tokens

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
        h = self.cfg.layers.hidden_size
        nn.init.normal_(self.fc.weight, std=0.02 / len(self.cfg.target_layer_ids) ** 0.5)
        self.fc.weight[:, -h:] += torch.eye(h)

    # -- public format --------------------------------------------------------------------------
    def draft_state_dict(self) -> dict:
        """The draft's own tensors with the public flat names (spec §7.2)."""
        return {k: v for k, v in self.state_dict().items()}


def save_draft(model: DraftModel, out_dir: str, dtype=torch.bfloat16) -> dict:
    """Write ``config.json`` + ``model.safetensors`` (weights in ``dtype``). Returns the tensors."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.draft_state_dict().items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = dataclasses.replace(model.cfg, layers=dataclasses.replace(model.cfg.layers, dtype=dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    return tensors
