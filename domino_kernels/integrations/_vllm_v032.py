"""The Domino draft model and the V1 DFlash-proposer hooks, written against vLLM 0.32's internals.

Imported only by :func:`domino_kernels.integrations.vllm.register` on a supported vLLM version.
What vLLM's DFlash path lacks for a Domino draft, and what this module adds (docs/vllm.md):

* the head weights: ``DFlashQwen3ForCausalLM.load_weights`` has no module for ``prefix_gru.*`` /
  ``embed_proj.*``; :class:`DominoQwen3ForCausalLM` takes them out of the weight stream into
  buffers of its own (allocated at construction, so vLLM's memory profile counts them);
* ``shift_label``: vLLM samples the mask slots 1..K of each block; with ``shift_label`` proposal i
  comes from slot i-1 (the anchor slot predicts proposal 1), so the hook moves the sample indices
  back by one slot;
* the head: instead of argmax (or vLLM's temperature sampling) of the base logits, the proposals
  come from ``torch.ops.domino.domino_rollout`` over the base logits, the anchor (vLLM's
  ``next_token_ids``) and the proposal hiddens, with the GRU table on CUDA and the packed W2 on
  CPUs with AVX512_BF16, as ``domino_kernels.generate`` uses them.

Every hook runs vLLM's own code unchanged unless the proposer's draft model is a
:class:`DominoQwen3ForCausalLM`. Only vLLM's V1 model runner is hooked; the model refuses to build
under the V2 runner, and under tensor parallelism (its head needs the whole vocabulary).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen3_dflash import DFlashQwen3ForCausalLM
from vllm.v1.spec_decode.dflash import DFlashProposer

from domino_kernels import ops
from domino_kernels.model.config import DraftConfig
from domino_kernels.model.dflash import LEGACY_PREFIXES

logger = logging.getLogger(__name__)

# vLLM's threshold below which a request's temperature means greedy (vllm/v1/sample/sampler.py).
_GREEDY_EPS = 1e-5
# checkpoint name -> DominoHeadWeights field
_HEAD_KEYS = {"prefix_gru.weight_ih_l0": "w_ih", "prefix_gru.weight_hh_l0": "w_hh",
              "embed_proj.0.weight": "w1", "embed_proj.2.weight": "w2"}


def _head_key(name: str) -> Optional[str]:
    """The head tensor a checkpoint name holds (flat or legacy-prefixed), or None."""
    for prefix in LEGACY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name if name in _HEAD_KEYS else None


class DominoQwen3ForCausalLM(DFlashQwen3ForCausalLM):
    """vLLM's DFlash Qwen3 draft (backbone, context K/V, lm_head and embedding shared with the
    target) plus the Domino head weights and the rollout that turns base logits into proposals."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        _check_supported_setup(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        where = f"{self.draft_model_config.model}/config.json"
        cfg = DraftConfig.from_dict(self.config.to_dict(), where)
        if not cfg.has_head:
            raise ValueError(f"{where}: architecture {self.config.architectures} is a Domino draft but "
                             f"dflash_config.projector_type is not 'domino': a DFlash-only draft should "
                             f"name DFlashDraftModel")
        self.domino_cfg = cfg
        h, g, e, v = cfg.layers.hidden_size, cfg.gru_hidden_dim, cfg.emb_dim, cfg.layers.vocab_size
        self.head_shapes = {"w_ih": (3 * g, h), "w_hh": (3 * g, g), "w1": (e, h + g), "w2": (v, e)}
        dtype = vllm_config.model_config.dtype
        for field, shape in self.head_shapes.items():
            self.register_buffer(f"domino_{field}", torch.empty(shape, dtype=dtype), persistent=False)
        self._head_loaded: set = set()
        self.gru_table: Optional[torch.Tensor] = None
        self.w2_packed: Optional[torch.Tensor] = None
        k = vllm_config.speculative_config.num_speculative_tokens
        if k + 1 != cfg.block_size:
            logger.warning("Domino draft %s was trained on blocks of %d slots, but num_speculative_tokens=%d "
                           "gives blocks of %d: set num_speculative_tokens=%d for the trained acceptance",
                           self.draft_model_config.model, cfg.block_size, k, k + 1, cfg.block_size - 1)

    @property
    def domino_head(self) -> ops.DominoHeadWeights:
        return ops.DominoHeadWeights(self.domino_w_ih, self.domino_w_hh, self.domino_w1, self.domino_w2)

    def load_weights(self, weights):
        super().load_weights(self._take_head_weights(weights))
        missing = sorted(k for k, f in _HEAD_KEYS.items() if f not in self._head_loaded)
        if missing:
            raise ValueError(f"{self.draft_model_config.model}: Domino draft without head weights {missing}")

    def _take_head_weights(self, weights):
        """The weight stream without the head tensors, which are copied into the head buffers."""
        for name, tensor in weights:
            key = _head_key(name)
            if key is None:
                yield name, tensor
                continue
            field = _HEAD_KEYS[key]
            want = self.head_shapes[field]
            if tuple(tensor.shape) != want:
                c = self.domino_cfg
                raise ValueError(f"{self.draft_model_config.model}: {name} has shape {list(tensor.shape)}, "
                                 f"expected {list(want)} from hidden_size={c.layers.hidden_size}, "
                                 f"gru_hidden_dim={c.gru_hidden_dim}, emb_dim={c.emb_dim}, "
                                 f"vocab_size={c.layers.vocab_size}")
            getattr(self, f"domino_{field}").copy_(tensor)
            self._head_loaded.add(field)

    def embedding(self) -> torch.Tensor:
        """The target's ``embed_tokens`` rows [V, H] (vLLM shares it with the draft after loading)."""
        return self.model.embed_tokens.weight[: self.domino_cfg.layers.vocab_size]

    def prepare_rollout(self) -> None:
        """After vLLM shared the target's embedding: the GRU input table on CUDA, the packed W2 copy
        on a CPU with AVX512_BF16 (bf16 weights), as ``domino_kernels.generate`` does."""
        from domino_kernels import _C

        w2 = self.domino_w2
        if w2.device.type == "cuda" and self.gru_table is None:
            self.gru_table = ops.build_gru_table(self.embedding(), self.domino_w_ih)
        elif (w2.device.type == "cpu" and w2.dtype == torch.bfloat16 and _C.CPU_PACKED_W2
              and self.w2_packed is None):
            self.w2_packed = ops.pack_w2(w2)

    def propose(self, hidden: torch.Tensor, anchor: torch.Tensor, num_proposals: int,
                temperature: Optional[torch.Tensor]):
        """``(tokens [B*K], draft_probs [B*K, V] or None)`` for ``hidden [B*K, H]``, the K proposal
        hiddens of each request (request-major, already in proposal order: see the set_inputs hook),
        and ``anchor [>=B]``. ``temperature [B]`` (0 = greedy row) samples the proposals by
        Gumbel-max and returns their full draft distributions for vLLM's rejection sampler;
        None drafts greedily (vLLM then treats each proposal as a point mass)."""
        k = num_proposals
        b = hidden.shape[0] // k
        v = self.domino_cfg.layers.vocab_size
        base = self.compute_logits(hidden)
        if base.shape[-1] != v:
            raise ValueError(f"Domino head: base logits have {base.shape[-1]} columns, embed_proj.2 has {v} "
                             f"rows (a vocab-sharded lm_head is not supported)")
        if temperature is not None:
            temperature = temperature[:b]
        tokens, _, q_rows = ops.domino_rollout(
            hidden.view(b, k, -1), base.float().view(b, k, v), anchor[:b].long(), self.domino_head,
            self.embedding(), num_proposals=k, shift_label=True,  # hidden i-1 predicts proposal i
            pure_prefix_len=self.domino_cfg.pure_draft_prefix_len, temperature=temperature,
            return_q_rows=temperature is not None, gru_table=self.gru_table, w2_packed=self.w2_packed)
        probs = q_rows.view(b * k, v) if temperature is not None else None
        return tokens.view(-1), probs


def _check_supported_setup(vllm_config: VllmConfig) -> None:
    if vllm_config.use_v2_model_runner:
        raise NotImplementedError(
            "Domino drafters run on vLLM's V1 model runner only (the V2 runner's DFlash speculator is "
            "not hooked): start vLLM with VLLM_USE_V2_MODEL_RUNNER=0")
    tp = vllm_config.parallel_config.tensor_parallel_size
    if tp != 1:
        raise NotImplementedError(
            f"Domino drafters need tensor_parallel_size=1 (got {tp}): the Domino head's embed_proj.2 "
            f"and the rollout span the whole vocabulary (docs/vllm.md, tensor parallelism)")


def _domino_model(proposer) -> Optional[DominoQwen3ForCausalLM]:
    model = getattr(proposer, "model", None)
    if isinstance(model, BreakableCUDAGraphWrapper):
        model = model.unwrap()
    return model if isinstance(model, DominoQwen3ForCausalLM) else None


def _draft_temperature(proposer, sampling_metadata) -> Optional[torch.Tensor]:
    """Per-request temperatures (0 for greedy rows) when vLLM asks for probabilistic drafting
    (``draft_sample_method="probabilistic"``) and some request samples; else None (greedy)."""
    if not proposer._enable_probabilistic_draft_probs or sampling_metadata.all_greedy:
        return None
    t = sampling_metadata.temperature.float()
    return torch.where(t < _GREEDY_EPS, torch.zeros_like(t), t)


_ORIGINAL = {}


def install_proposer_hooks() -> None:
    """Wrap three methods of vLLM's V1 ``DFlashProposer`` (idempotent). Each wrapper calls vLLM's
    method unchanged unless the proposer holds a Domino draft model."""
    if _ORIGINAL:
        return
    for name in ("load_model", "set_inputs_first_pass", "_sample_draft_tokens"):
        _ORIGINAL[name] = getattr(DFlashProposer, name)
    DFlashProposer.load_model = _load_model
    DFlashProposer.set_inputs_first_pass = _set_inputs_first_pass
    DFlashProposer._sample_draft_tokens = _sample_draft_tokens


def _load_model(self, target_model) -> None:
    _ORIGINAL["load_model"](self, target_model)
    model = _domino_model(self)
    if model is None:
        return
    if not self.parallel_drafting:
        raise NotImplementedError("Domino drafters need vLLM's parallel (one-pass) DFlash drafting")
    model.prepare_rollout()
    logger.info("Domino draft head on: proposals from torch.ops.domino.domino_rollout (%s)",
                "GRU table" if model.gru_table is not None else
                "packed W2" if model.w2_packed is not None else "plain weights")


def _set_inputs_first_pass(self, target_token_ids, next_token_ids, target_positions,
                           target_hidden_states, token_indices_to_sample, cad,
                           num_rejected_tokens_gpu):
    out = _ORIGINAL["set_inputs_first_pass"](
        self, target_token_ids=target_token_ids, next_token_ids=next_token_ids,
        target_positions=target_positions, target_hidden_states=target_hidden_states,
        token_indices_to_sample=token_indices_to_sample, cad=cad,
        num_rejected_tokens_gpu=num_rejected_tokens_gpu)
    model = _domino_model(self)
    if model is None:
        return out
    num_tokens, indices, new_cad = out
    self._domino_anchor = next_token_ids  # the block's slot 0: the rollout's GRU starts from it
    if model.domino_cfg.shift_label:
        # vLLM picks the mask slots 1..K of each request's block of 1+K query rows; with
        # shift_label proposal i comes from slot i-1 of the same block.
        indices = indices - 1
    return num_tokens, indices, new_cad


def _sample_draft_tokens(self, hidden_states, sampling_metadata):
    model = _domino_model(self)
    if model is None:
        return _ORIGINAL["_sample_draft_tokens"](self, hidden_states, sampling_metadata)
    return model.propose(hidden_states, self._domino_anchor, self.num_speculative_tokens,
                         _draft_temperature(self, sampling_metadata))
