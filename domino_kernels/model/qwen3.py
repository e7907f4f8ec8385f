"""The Qwen3 target: a gpt-fast style decoder over a paged KV cache.

Tokens of a batch are packed (``[total, ...]``) with ``q_cu_lens`` marking each request's new
tokens; every layer appends its K/V with ``append_kv`` and attends with ``tree_attention`` (causal
for prefill, chain verify and plain decoding, tree for tree verify). The features of
``capture_layers`` are returned concatenated in that order: what the draft consumes as context.

Feature of 0-based layer ``i`` = Hugging Face ``hidden_states[i + 1]`` (spec §2.1), the training
reference's definition (SpecForge's ``extract_context_feature``). For ``i < L-1`` that is the
residual-stream output of layer ``i``; for the last layer ``i = L-1`` it is the output of the
*final norm* (HF's ``hidden_states[L]``), unless ``last_layer_feature = "residual"`` asks for
the raw residual stream of layer ``L-1`` (what vLLM 0.32's DFlash path feeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import ops
from .config import FINAL_NORM, Qwen3Config
from .loading import TensorSource, read_state_dict


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face Qwen3RMSNorm: normalise in fp32, cast back, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Rope:
    """Default RoPE (rotate-half form), cos/sin computed in fp32 for the given positions."""

    def __init__(self, head_dim: int, theta: float, device):
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.inv_freq = (1.0 / (theta ** exponent)).to(device)

    def angles(self, positions: torch.Tensor):
        """fp32 ``cos, sin`` of shape ``positions.shape + (head_dim,)``."""
        freqs = positions.float()[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """``cos, sin [T, 1, head_dim]`` in ``dtype`` for packed tokens ``[T, heads, head_dim]``."""
        cos, sin = self.angles(positions)
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class PagedKVCache:
    """K/V pages for every layer: ``k[layer]`` is ``[num_pages, page_size, Hkv, D]``.

    Each request owns a fixed run of pages (``block_table`` row), sized for the longest sequence it
    may reach; ``lens`` counts its committed tokens. New tokens are written past ``lens`` by
    ``append_kv`` and only count once ``commit`` moves ``lens``: uncommitted slots are scratch that
    the next forward overwrites (this is how rejected drafts are dropped without copying)."""

    def __init__(self, num_layers: int, batch: int, capacity: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device, page_size: int = 16):
        pages = (capacity + page_size - 1) // page_size
        shape = (num_layers, batch * pages, page_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_table = torch.arange(batch * pages, dtype=torch.int32, device=device).view(batch, pages)
        self.lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.page_size = page_size
        self.capacity = pages * page_size

    def commit(self, rows: torch.Tensor, counts: torch.Tensor) -> None:
        self.lens[rows] += counts.to(torch.int32)

    def move_tokens(self, rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the K/V of logical slot ``src[i]`` of request ``rows[i]`` to slot ``dst[i]``, in every
        layer (tree verification compacts the accepted path with it). Sources are gathered before
        any write, so overlapping moves are safe."""
        if rows.numel() == 0:
            return
        bt = self.block_table[rows].long()
        ps = self.page_size
        sp, ss = bt.gather(1, (src // ps)[:, None])[:, 0], src % ps
        dp, ds = bt.gather(1, (dst // ps)[:, None])[:, 0], dst % ps
        for cache in (self.k, self.v):
            cache[:, dp, ds] = cache[:, sp, ss].clone()

    def layer_views(self, rows: torch.Tensor, q_cu_lens: torch.Tensor, mode: str = "causal",
                    tree_mask: Optional[torch.Tensor] = None) -> list["LayerCache"]:
        """One :class:`LayerCache` per layer for a forward of the new tokens of requests ``rows``."""
        block_table, kv_lens = self.block_table[rows], self.lens[rows]
        return [LayerCache(k, v, block_table, kv_lens, q_cu_lens, mode, tree_mask)
                for k, v in zip(self.k, self.v)]


@dataclass
class LayerCache:
    """One layer's K/V pages as seen by one forward: the requests' ``block_table`` rows, their
    committed ``kv_lens``, the packing of their new tokens (``q_cu_lens``) and how those attend
    (``mode`` of ``tree_attention``, with ``tree_mask`` for ``"tree"``)."""

    k: torch.Tensor
    v: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor
    q_cu_lens: torch.Tensor
    mode: str = "causal"
    tree_mask: Optional[torch.Tensor] = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the new tokens' K/V past each request's committed length."""
        ops.append_kv(k, v, self.k, self.v, self.block_table, self.kv_lens, self.q_cu_lens)

    def attend(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention of the new tokens' queries over committed + new K/V."""
        return ops.tree_attention(q, self.k, self.v, self.block_table, self.kv_lens, self.q_cu_lens,
                                  mode=self.mode, tree_mask=self.tree_mask, scale=scale)


@dataclass
class Qwen3Layer:
    input_norm: torch.Tensor
    w_qkv: torch.Tensor          # [ (Hq + 2 Hkv) D, H ]: q_proj, k_proj, v_proj stacked
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    w_o: torch.Tensor
    post_norm: torch.Tensor
    w_gate_up: torch.Tensor      # [2 I, H]: gate_proj, up_proj stacked
    w_down: torch.Tensor


def load_layer(src: TensorSource, prefix: str, cfg: Qwen3Config) -> Qwen3Layer:
    h, d = cfg.hidden_size, cfg.head_dim
    hq, hkv, inter = cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.intermediate_size
    why = (f"hidden_size={h}, heads={cfg.num_attention_heads}, kv_heads={cfg.num_key_value_heads}, "
           f"head_dim={d}, intermediate_size={inter}")
    t = lambda name, shape: src.take(prefix + name, shape, why)  # noqa: E731
    return Qwen3Layer(
        input_norm=t("input_layernorm.weight", (h,)),
        w_qkv=torch.cat([t("self_attn.q_proj.weight", (hq, h)), t("self_attn.k_proj.weight", (hkv, h)),
                         t("self_attn.v_proj.weight", (hkv, h))]),
        q_norm=t("self_attn.q_norm.weight", (d,)), k_norm=t("self_attn.k_norm.weight", (d,)),
        w_o=t("self_attn.o_proj.weight", (h, hq)),
        post_norm=t("post_attention_layernorm.weight", (h,)),
        w_gate_up=torch.cat([t("mlp.gate_proj.weight", (inter, h)), t("mlp.up_proj.weight", (inter, h))]),
        w_down=t("mlp.down_proj.weight", (h, inter)),
    )


def layer_qkv(layer: Qwen3Layer, cfg: Qwen3Config, u: torch.Tensor, cos, sin):
    """q, k (normed, rotated) and v of normalised inputs ``u`` ``[T, H]``."""
    d = cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    qkv = F.linear(u, layer.w_qkv)
    q, k, v = qkv.split([nq * d, nkv * d, nkv * d], dim=-1)
    q = Rope.apply(rms_norm(q.view(-1, nq, d), layer.q_norm, cfg.rms_norm_eps), cos, sin)
    k = Rope.apply(rms_norm(k.view(-1, nkv, d), layer.k_norm, cfg.rms_norm_eps), cos, sin)
    return q, k, v.reshape(-1, nkv, d)


def layer_mlp(layer: Qwen3Layer, x: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, layer.w_gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, layer.w_down)


def layer_attention(layer: Qwen3Layer, cfg: Qwen3Config, x: torch.Tensor, cos, sin,
                    kv: LayerCache) -> torch.Tensor:
    """The attention half of a decoder layer (residual added): new K/V appended to ``kv``."""
    q, k, v = layer_qkv(layer, cfg, rms_norm(x, layer.input_norm, cfg.rms_norm_eps), cos, sin)
    kv.append(k, v)
    o = kv.attend(q, scale=1.0 / math.sqrt(cfg.head_dim))
    return x + F.linear(o.reshape(x.shape[0], -1), layer.w_o)


class Qwen3:
    """Qwen3ForCausalLM for inference: embedding, decoder layers, final norm, lm_head."""

    def __init__(self, cfg: Qwen3Config, embed: torch.Tensor, layers: Sequence[Qwen3Layer],
                 norm: torch.Tensor, lm_head: torch.Tensor):
        self.cfg, self.embed, self.layers, self.norm, self.lm_head = cfg, embed, list(layers), norm, lm_head
        self.rope = Rope(cfg.head_dim, cfg.rope_theta, embed.device)
        self.capture_layers: list[int] = []
        self.last_layer_feature: str = FINAL_NORM  # what a captured layer L-1 yields

    @property
    def device(self):
        return self.embed.device

    @property
    def dtype(self):
        return self.embed.dtype

    def new_cache(self, batch: int, capacity: int, page_size: int = 16) -> PagedKVCache:
        c = self.cfg
        return PagedKVCache(c.num_hidden_layers, batch, capacity, c.num_key_value_heads, c.head_dim,
                            self.dtype, self.device, page_size)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: PagedKVCache,
                rows: torch.Tensor, q_cu_lens: torch.Tensor, *, mode: str = "causal",
                tree_mask: Optional[torch.Tensor] = None, logits_rows: Optional[torch.Tensor] = None,
                capture: bool = True):
        """Run packed new tokens of requests ``rows`` (cache row indices) on top of their committed
        KV. Returns ``(logits [n, V] fp32 for logits_rows (all tokens when None), features
        [total, len(capture_layers) * H] or None)``; the feature of layer ``L-1`` follows
        ``last_layer_feature`` (module docstring). ``capture=False`` skips the features (None) for
        a step whose features nobody will read. The cache's ``lens`` is not advanced."""
        cfg = self.cfg
        capture_layers = self.capture_layers if capture else ()
        views = cache.layer_views(rows, q_cu_lens, mode, tree_mask)
        cos, sin = self.rope.cos_sin(positions, self.dtype)
        x = self.embed[tokens]
        captured = {}
        for i, layer in enumerate(self.layers):
            x = layer_attention(layer, cfg, x, cos, sin, views[i])
            x = x + layer_mlp(layer, rms_norm(x, layer.post_norm, cfg.rms_norm_eps))
            if i in capture_layers:
                captured[i] = x
        last = len(self.layers) - 1
        if last in captured and self.last_layer_feature == FINAL_NORM:
            normed = rms_norm(x, self.norm, cfg.rms_norm_eps)  # HF hidden_states[L]
            captured[last] = normed
            h = normed if logits_rows is None else normed[logits_rows]
        else:
            h = rms_norm(x if logits_rows is None else x[logits_rows], self.norm, cfg.rms_norm_eps)
        feats = torch.cat([captured[i] for i in capture_layers], dim=-1) if captured else None
        logits = F.linear(h, self.lm_head).float()
        return logits, feats


def load_qwen3(directory: str, dtype: Optional[torch.dtype] = None, device="cpu") -> Qwen3:
    """Load a Hugging Face Qwen3 checkpoint directory (config.json + safetensors)."""
    cfg = Qwen3Config.from_dir(directory)
    cfg.dtype = dtype or cfg.dtype
    return qwen3_from_state(cfg, read_state_dict(directory, cfg.dtype), directory, device)


def qwen3_from_state(cfg: Qwen3Config, state: dict, where: str, device="cpu") -> Qwen3:
    """Build the target from a Hugging Face state dict, every shape checked against ``cfg``."""
    src = TensorSource(state, where)
    v, h = cfg.vocab_size, cfg.hidden_size
    embed = src.take("model.embed_tokens.weight", (v, h), f"vocab_size={v}, hidden_size={h}")
    layers = [load_layer(src, f"model.layers.{i}.", cfg) for i in range(cfg.num_hidden_layers)]
    norm = src.take("model.norm.weight", (h,), f"hidden_size={h}")
    if cfg.tie_word_embeddings or not src.has("lm_head.weight"):
        if not cfg.tie_word_embeddings:
            src.take("lm_head.weight", (v, h))  # raises: untied checkpoints must carry lm_head
        lm_head = embed
        if src.has("lm_head.weight"):
            src.take("lm_head.weight", (v, h), "tied to embed_tokens")
    else:
        lm_head = src.take("lm_head.weight", (v, h), f"vocab_size={v}, hidden_size={h}")
    src.check_all_used(ignore=("rotary_emb.inv_freq",))
    to = lambda t: t.to(device=device, dtype=cfg.dtype)  # noqa: E731
    layers = [Qwen3Layer(**{k: to(getattr(l, k)) for k in l.__dataclass_fields__}) for l in layers]
    embed_d = to(embed)
    return Qwen3(cfg, embed_d, layers, to(norm), embed_d if lm_head is embed else to(lm_head))
