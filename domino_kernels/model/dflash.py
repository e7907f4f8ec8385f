"""The draft: a DFlash backbone (spec §2) with an optional Domino head (spec §3).

The backbone borrows the target's ``embed_tokens`` and ``lm_head``. Committed context positions
enter the draft KV cache once, as K/V projected from ``hidden_norm(fc(target features))`` in every
layer (no input_layernorm, k_norm + RoPE at the token's position). A block of ``block_size`` slots
(anchor, then mask tokens) at positions ``s..s+B-1`` attends to the context and to itself both ways;
its K/V are written past the committed length as scratch and never kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .. import ops
from ..ops import DominoHeadWeights
from .config import CheckpointError, DraftConfig, check_last_layer_feature
from .loading import TensorSource, read_state_dict
from .qwen3 import PagedKVCache, Qwen3, Qwen3Layer, Rope, layer_attention, layer_mlp, load_layer, rms_norm

LEGACY_PREFIXES = ("logit_head.", "logits_correction.", "model.")


@dataclass
class DraftModel:
    cfg: DraftConfig
    fc: torch.Tensor               # [H, n_target_layers * H]
    hidden_norm: torch.Tensor
    layers: list
    norm: torch.Tensor
    head: Optional[DominoHeadWeights]
    gru_table: Optional[torch.Tensor] = None   # [V, 3G] = embed @ w_ih^T, see use_gru_table
    w2_packed: Optional[torch.Tensor] = None   # CPU copy of head.w2 for the packed kernel, see use_packed_w2
    # adaptive speculation policies per decoding configuration (generate(): measured step costs and
    # acceptance carry over between calls)
    policies: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        c = self.cfg.layers
        self.rope = Rope(c.head_dim, c.rope_theta, self.fc.device)

    def new_cache(self, batch: int, capacity: int, page_size: int = 16) -> PagedKVCache:
        c = self.cfg.layers
        return PagedKVCache(c.num_hidden_layers, batch, capacity, c.num_key_value_heads, c.head_dim,
                            self.fc.dtype, self.fc.device, page_size)

    def append_context(self, feats: torch.Tensor, positions: torch.Tensor, cache: PagedKVCache,
                       rows: torch.Tensor, q_cu_lens: torch.Tensor,
                       commit_lens: Optional[torch.Tensor] = None) -> None:
        """Write the context K/V of newly committed positions (packed ``feats [total, nT*H]``) in
        every layer and commit them (spec §2.2). ``commit_lens [B]`` commits only the first
        ``commit_lens[b]`` of request b's rows (default: all): the rest are scratch, so a padded
        batch of features can be appended without reading its ragged counts on the host."""
        c = self.cfg.layers
        ctx = rms_norm(F.linear(feats, self.fc), self.hidden_norm, c.rms_norm_eps)
        cos, sin = self.rope.cos_sin(positions, ctx.dtype)
        d, nq, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        for layer, view in zip(self.layers, cache.layer_views(rows, q_cu_lens)):
            k, v = F.linear(ctx, layer.w_qkv[nq * d:]).split([nkv * d, nkv * d], dim=-1)
            k = Rope.apply(rms_norm(k.view(-1, nkv, d), layer.k_norm, c.rms_norm_eps), cos, sin)
            view.append(k, v.reshape(-1, nkv, d))
        cache.commit(rows, q_cu_lens[1:] - q_cu_lens[:-1] if commit_lens is None else commit_lens)

    def block_forward(self, anchor: torch.Tensor, embed: torch.Tensor, cache: PagedKVCache,
                      rows: torch.Tensor, start: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``z [B, block_size, H]`` (after the final norm) for blocks anchored at position ``start``
        (default: each request's committed draft length, which is the anchor's position unless
        context positions were left out of the draft cache)."""
        c, bs = self.cfg.layers, self.cfg.block_size
        b = anchor.shape[0]
        ids = torch.full((b, bs), self.cfg.mask_token_id, dtype=torch.int64, device=anchor.device)
        ids[:, 0] = anchor
        first = cache.lens[rows] if start is None else start
        positions = (first.long()[:, None] + torch.arange(bs, device=anchor.device)).reshape(-1)
        cu = torch.arange(0, (b + 1) * bs, bs, dtype=torch.int32, device=anchor.device)
        cos, sin = self.rope.cos_sin(positions, embed.dtype)
        x = embed[ids.reshape(-1)]
        for layer, view in zip(self.layers, cache.layer_views(rows, cu, mode="full")):
            x = layer_attention(layer, c, x, cos, sin, view)
            x = x + layer_mlp(layer, rms_norm(x, layer.post_norm, c.rms_norm_eps))
        return rms_norm(x, self.norm, c.rms_norm_eps).view(b, bs, -1)

    def use_gru_table(self, target: Qwen3) -> None:
        """Precompute the GRU input table (``[V, 3G]``, 0.93 GB in bf16 for Qwen3-8B): each rollout
        step then gathers a row instead of streaming ``w_ih`` (about 1.3x faster rollout on a GPU).
        Rounding of the table may change a draft token at a near tie; never the output."""
        if self.head is not None and self.gru_table is None:
            self.gru_table = ops.build_gru_table(target.embed, self.head.w_ih)

    def use_packed_w2(self) -> None:
        """On a CPU with AVX512_BF16, keep a packed copy of the bf16 ``embed_proj.2`` weight (the
        same size as it): the rollout's vocabulary pass then runs without horizontal sums. Same
        tokens as without it (the products are equal; only their summation order differs)."""
        from domino_kernels import _C

        head = self.head
        if (head is not None and self.w2_packed is None and _C.CPU_PACKED_W2
                and head.w2.device.type == "cpu" and head.w2.dtype == torch.bfloat16):
            self.w2_packed = ops.pack_w2(head.w2)

    def proposal_hidden(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """The hidden that predicts proposal i = 1..n: slot i-1 with shift_label, else slot i (§3.2)."""
        return z[:, :n] if self.cfg.shift_label else z[:, 1:n + 1]

    def proposal_logits(self, z: torch.Tensor, n: int, lm_head: torch.Tensor) -> torch.Tensor:
        """The DFlash base logits ``[B, n, V]`` fp32 of proposals 1..n. One 2-D GEMM: a 3-D
        ``F.linear`` on the sliced ``z`` runs as a batched matmul that copies the transposed
        ``lm_head`` every call in bf16 (2 ms per step on the default pair's CPU run)."""
        h = self.proposal_hidden(z, n)
        b = h.shape[0]
        return F.linear(h.reshape(b * n, -1), lm_head).float().view(b, n, -1)

    def max_proposals(self) -> int:
        return self.cfg.default_num_proposals

    def propose_chain(self, z, anchor, target: Qwen3, n: int) -> torch.Tensor:
        """``n`` greedy draft tokens per request: DFlash argmax, or the Domino rollout."""
        base = self.proposal_logits(z, n, target.lm_head)
        if self.head is None:
            return base.argmax(-1)
        tokens, _, _ = ops.domino_rollout(
            z, base, anchor, self.head, target.embed, num_proposals=n,
            shift_label=self.cfg.shift_label, pure_prefix_len=self.cfg.pure_draft_prefix_len,
            gru_table=self.gru_table, w2_packed=self.w2_packed)
        return tokens

    def sample_chain(self, z, anchor, target: Qwen3, n: int, temperature: torch.Tensor,
                     seed: torch.Tensor, offset: torch.Tensor):
        """``n`` draft tokens per request sampled from the draft's own distribution
        ``q = softmax(scores / temperature)`` (Gumbel-max, Philox stream of the chain rollout), and
        the rows they were drawn from: ``(tokens [B, n], q_rows [B, n, V] fp32)``. Without a
        Domino head the rollout runs with the rank-1 zero head, so q is the DFlash base softmax."""
        base = self.proposal_logits(z, n, target.lm_head)
        head = self.head if self.head is not None else self._zero_head(target)
        tokens, _, q_rows = ops.domino_rollout(
            z, base, anchor, head, target.embed, num_proposals=n,
            shift_label=self.cfg.shift_label, pure_prefix_len=self.cfg.pure_draft_prefix_len,
            temperature=temperature, seed=seed, offset=offset, return_q_rows=True,
            gru_table=self.gru_table if self.head is not None else None,
            w2_packed=self.w2_packed if self.head is not None else None)
        return tokens, q_rows

    def propose_tree(self, z, anchor, target: Qwen3, topk: int, budget: int):
        """(tokens, parents, num_nodes) of a draft tree with node 0 = anchor, in verify's layout.
        Without a Domino head the tree rollout runs with a rank-1 zero head: its correction is
        exactly 0, so children are the top-k of the DFlash base logits."""
        tokens, parents, _, num, _ = self._tree_rollout(z, anchor, target, topk, budget)
        return tokens, parents, num

    def sample_tree(self, z, anchor, target: Qwen3, topk: int, budget: int, temperature: torch.Tensor,
                    seed: torch.Tensor, offset: torch.Tensor):
        """A sampled draft tree (each expanded node's children drawn by Gumbel-top-k from its q: a
        sample without replacement) and the q rows they were drawn from:
        ``(tokens, parents, num_nodes, q_rows [B, budget+1, V] fp32)``, in verify's layout."""
        tokens, parents, _, num, q_rows = self._tree_rollout(
            z, anchor, target, topk, budget, temperature=temperature, seed=seed, offset=offset,
            return_q_rows=True)
        return tokens, parents, num, q_rows

    def _tree_rollout(self, z, anchor, target: Qwen3, topk: int, budget: int, **sampling):
        """``domino_tree_rollout`` over this draft's block (depth capped by the block), with the
        rank-1 zero head when the draft has no Domino head; ``sampling`` goes to the op as is."""
        depth = min(budget, self.max_proposals())
        base = self.proposal_logits(z, depth, target.lm_head)
        head = self.head if self.head is not None else self._zero_head(target)
        return ops.domino_tree_rollout(
            z, base, anchor, head, target.embed, topk=topk, budget=budget, depth=depth,
            shift_label=self.cfg.shift_label, pure_prefix_len=self.cfg.pure_draft_prefix_len,
            gru_table=self.gru_table if self.head is not None else None,
            w2_packed=self.w2_packed if self.head is not None else None, **sampling)

    def _zero_head(self, target: Qwen3):
        if getattr(self, "_zero", None) is None:
            h, v = self.cfg.layers.hidden_size, self.cfg.layers.vocab_size
            z = lambda *s: torch.zeros(*s, dtype=target.dtype, device=target.device)  # noqa: E731
            self._zero = DominoHeadWeights(w_ih=z(3, h), w_hh=z(3, 1), w1=z(1, h + 1), w2=z(v, 1))
        return self._zero


def check_pair(draft_cfg: DraftConfig, target: Qwen3, where: str) -> None:
    """A draft only works with the target it was trained on: the shapes that must agree."""
    t, d = target.cfg, draft_cfg
    if d.layers.hidden_size != t.hidden_size:
        raise CheckpointError(f"{where}: draft hidden_size {d.layers.hidden_size} != target hidden_size "
                              f"{t.hidden_size}")
    if d.layers.vocab_size != t.vocab_size:
        raise CheckpointError(f"{where}: draft vocab_size {d.layers.vocab_size} != target vocab_size "
                              f"{t.vocab_size}")
    bad = [i for i in d.target_layer_ids if not 0 <= i < t.num_hidden_layers]
    if bad:
        raise CheckpointError(f"{where}: target_layer_ids {d.target_layer_ids} name layers {bad} outside "
                              f"the target's 0..{t.num_hidden_layers - 1}")
    if not 0 <= d.mask_token_id < t.vocab_size:
        raise CheckpointError(f"{where}: mask_token_id {d.mask_token_id} is outside the vocabulary "
                              f"(vocab_size {t.vocab_size})")
    if d.block_size < 2:
        raise CheckpointError(f"{where}: block_size {d.block_size} must be at least 2")


def load_draft(directory: str, target: Qwen3, dtype: Optional[torch.dtype] = None, *,
               last_layer_feature: Optional[str] = None) -> DraftModel:
    """Load a DFlash or Domino draft directory for ``target`` (whose embedding and lm_head it uses).

    ``last_layer_feature`` overrides the config's meaning of a feature of the target's last layer
    (``"final_norm"``, the default and the training reference, or ``"residual"``, vLLM 0.32's; see
    ``model.config``). It matters only when ``target_layer_ids`` contains that layer."""
    cfg = DraftConfig.from_dir(directory)
    if last_layer_feature is not None:
        cfg.last_layer_feature = check_last_layer_feature(last_layer_feature, "argument 'last_layer_feature'")
    check_pair(cfg, target, directory)
    return draft_from_state(cfg, read_state_dict(directory, dtype or target.dtype), target, directory)


def draft_from_state(cfg: DraftConfig, state: dict, target: Qwen3, where: str) -> DraftModel:
    """Build the draft from its state dict (flat or legacy-prefixed keys), shapes checked."""
    src = TensorSource(state, where, strip_prefixes=LEGACY_PREFIXES)
    h = cfg.layers.hidden_size
    n = len(cfg.target_layer_ids)
    fc = src.take("fc.weight", (h, n * h), f"hidden_size={h} x {n} target_layer_ids")
    hidden_norm = src.take("hidden_norm.weight", (h,))
    layers = [load_layer(src, f"layers.{i}.", cfg.layers) for i in range(cfg.layers.num_hidden_layers)]
    norm = src.take("norm.weight", (h,))
    head = None
    if cfg.has_head:
        g, e, v = cfg.gru_hidden_dim, cfg.emb_dim, cfg.layers.vocab_size
        head = DominoHeadWeights(
            w_ih=src.take("prefix_gru.weight_ih_l0", (3 * g, h), f"gru_hidden_dim={g}, hidden_size={h}"),
            w_hh=src.take("prefix_gru.weight_hh_l0", (3 * g, g), f"gru_hidden_dim={g}"),
            w1=src.take("embed_proj.0.weight", (e, h + g), f"emb_dim={e}, hidden_size+gru_hidden_dim={h + g}"),
            w2=src.take("embed_proj.2.weight", (v, e), f"vocab_size={v}, emb_dim={e}"))
    src.check_all_used(ignore=("rotary_emb.inv_freq",))
    to = lambda t: t.to(device=target.device, dtype=target.dtype)  # noqa: E731
    layers = [Qwen3Layer(**{k: to(getattr(l, k)) for k in l.__dataclass_fields__}) for l in layers]
    head = None if head is None else DominoHeadWeights(*map(to, head.tensors()))
    return DraftModel(cfg, to(fc), to(hidden_norm), layers, to(norm), head)
