"""The schemas of Hugging Face Qwen3 ``config.json`` files (read in transformers 4 and 5 forms,
written in the transformers 4 form) and of the DFlash/Domino draft config (``dflash_config``,
spec §7.1). Each dataclass owns its format in both directions: ``from_dict`` reads what
``to_dict`` writes (and the published variants), so the loader and the trainer share one schema."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float": torch.float32}


# What a draft's context feature for the target's last layer L-1 is (``target_layer_ids``
# containing L-1). FINAL_NORM: the final norm's output, HF ``hidden_states[L]``, as the training
# reference builds it (SpecForge: ``hidden_states[id + 1]``). RESIDUAL: the raw residual stream of
# layer L-1, as vLLM 0.32 feeds it. Other layers' features are the same under both.
FINAL_NORM = "final_norm"
RESIDUAL = "residual"
LAST_LAYER_FEATURES = (FINAL_NORM, RESIDUAL)


def check_last_layer_feature(value, name: str = "last_layer_feature") -> str:
    if value not in LAST_LAYER_FEATURES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, LAST_LAYER_FEATURES))}, got {value!r}")
    return value


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file or tensor."""


def parse_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of float32, bfloat16, float16")
    return _DTYPES[key]


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _rope_theta(cfg: dict, path: str) -> float:
    """transformers 4 puts ``rope_theta`` (and ``rope_scaling``) at the top level; transformers 5
    nests them in ``rope_parameters``. Only the default RoPE is implemented."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", None):
        raise CheckpointError(f"{path}: rope type {kind!r} is not supported (only default RoPE)")
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise CheckpointError(f"{path}: neither 'rope_theta' nor 'rope_parameters.rope_theta' is set")
    return float(theta)


def dtype_name(dtype: torch.dtype) -> str:
    """The ``config.json`` spelling of a weight dtype."""
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


@dataclass
class Qwen3Config:
    """The shape of a Qwen3 decoder stack (the target, or the draft backbone's layers)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    dtype: torch.dtype = torch.bfloat16
    eos_token_ids: list = field(default_factory=list)
    bos_token_id: Optional[int] = None

    @classmethod
    def from_dict(cls, cfg: dict, path: str = "config.json") -> "Qwen3Config":
        def need(key):
            if key not in cfg:
                raise CheckpointError(f"{path}: missing required key {key!r}")
            return cfg[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        kv = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv:
            raise CheckpointError(f"{path}: num_attention_heads={heads} is not a multiple of "
                                  f"num_key_value_heads={kv}")
        dt = cfg.get("dtype", cfg.get("torch_dtype")) or "bfloat16"
        return cls(
            vocab_size=int(need("vocab_size")), hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")), num_attention_heads=heads,
            num_key_value_heads=kv, head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(cfg, path),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 40960)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            dtype=parse_dtype(dt), eos_token_ids=_ids(cfg.get("eos_token_id")),
            bos_token_id=cfg.get("bos_token_id"),
        )

    def to_dict(self) -> dict:
        """The Hugging Face ``config.json`` fields of this shape (transformers 4 form, default
        RoPE, no sliding window); ``eos_token_id`` is a single id when there is one."""
        eos = self.eos_token_ids
        return {
            "model_type": "qwen3", "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "hidden_act": "silu", "attention_bias": False, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "rope_scaling": None,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_types": ["full_attention"] * self.num_hidden_layers, "use_sliding_window": False,
            "sliding_window": None, "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings, "dtype": dtype_name(self.dtype),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (eos[0] if len(eos) == 1 else list(eos)) if eos else None,
        }

    @classmethod
    def from_dir(cls, directory: str) -> "Qwen3Config":
        cfg = cls.from_dict(read_json(os.path.join(directory, "config.json")),
                            os.path.join(directory, "config.json"))
        gen = os.path.join(directory, "generation_config.json")
        if os.path.exists(gen):  # generation_config's eos list is the one generate() stops on
            extra = _ids(read_json(gen).get("eos_token_id"))
            cfg.eos_token_ids = sorted(set(cfg.eos_token_ids) | set(extra))
        return cfg


def build_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's default when ``target_layer_ids`` is absent: evenly spaced over [1, L-3]."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    start, end = 1, num_target_layers - 3
    span = end - start
    return [int(round(start + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


@dataclass
class DraftConfig:
    """A DFlash draft (``projector_type`` None) or a Domino draft (``domino``/``causal_v5``).
    ``layers`` is the backbone's Qwen3 shape; heads, vocabulary and hidden size follow the target."""

    layers: Qwen3Config
    block_size: int
    target_layer_ids: list
    mask_token_id: int
    projector_type: Optional[str]
    pure_draft_prefix_len: int
    shift_label: bool
    emb_dim: Optional[int]
    gru_hidden_dim: Optional[int]
    num_target_layers: Optional[int] = None
    last_layer_feature: str = FINAL_NORM  # see FINAL_NORM / RESIDUAL above

    @property
    def has_head(self) -> bool:
        return self.projector_type is not None

    @property
    def default_num_proposals(self) -> int:
        """Slots that carry a proposal: all B with shift_label (the HF reference), else B-1."""
        return self.block_size if self.shift_label else self.block_size - 1

    @classmethod
    def from_dir(cls, directory: str) -> "DraftConfig":
        path = os.path.join(directory, "config.json")
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, cfg: dict, path: str = "config.json") -> "DraftConfig":
        layers = Qwen3Config.from_dict(cfg, path)
        dfc = cfg.get("dflash_config") or {}
        proj = dfc.get("projector_type")
        if proj == "causal_v5":  # the authors' original name for the Domino projector
            proj = "domino"
        if proj not in (None, "domino"):
            raise CheckpointError(f"{path}: dflash_config.projector_type {proj!r} is not supported "
                                  f"(expected 'domino', its alias 'causal_v5', or none for DFlash)")
        n_target = int(cfg.get("num_target_layers", 0)) or None
        ids = dfc.get("target_layer_ids", cfg.get("target_layer_ids"))
        if ids is None:
            if n_target is None:
                raise CheckpointError(f"{path}: no target_layer_ids and no num_target_layers")
            ids = build_target_layer_ids(n_target, layers.num_hidden_layers)
        emb_dim = dfc.get("emb_dim", cfg.get("emb_dim"))
        gru = dfc.get("gru_hidden_dim", emb_dim)  # legacy checkpoints: G defaults to E
        mask = dfc.get("mask_token_id", cfg.get("mask_token_id"))
        if mask is None:
            raise CheckpointError(f"{path}: dflash_config.mask_token_id is missing")
        if proj is not None and (emb_dim is None or gru is None):
            raise CheckpointError(f"{path}: a Domino draft needs dflash_config.emb_dim and gru_hidden_dim")
        last = dfc.get("last_layer_feature", FINAL_NORM)
        if last not in LAST_LAYER_FEATURES:
            raise CheckpointError(f"{path}: dflash_config.last_layer_feature {last!r} is not one of "
                                  f"{', '.join(map(repr, LAST_LAYER_FEATURES))}")
        return cls(layers=layers, block_size=int(cfg.get("block_size", 16)),
                   target_layer_ids=[int(i) for i in ids], mask_token_id=int(mask),
                   projector_type=proj, pure_draft_prefix_len=int(dfc.get("pure_draft_prefix_len", 1)),
                   shift_label=bool(dfc.get("shift_label", False)),
                   emb_dim=None if emb_dim is None else int(emb_dim),
                   gru_hidden_dim=None if gru is None else int(gru), num_target_layers=n_target,
                   last_layer_feature=last)

    def to_dict(self) -> dict:
        """The draft's ``config.json`` in the public format (spec §7.1): the backbone's Qwen3 fields,
        ``block_size``, ``num_target_layers`` and ``dflash_config``; a Domino draft also repeats
        ``emb_dim`` at the top level, as the published configs do."""
        dfc = {"target_layer_ids": list(self.target_layer_ids), "mask_token_id": self.mask_token_id,
               "shift_label": self.shift_label}
        if self.has_head:
            dfc.update({"projector_type": self.projector_type,
                        "pure_draft_prefix_len": self.pure_draft_prefix_len,
                        "emb_dim": self.emb_dim, "gru_hidden_dim": self.gru_hidden_dim})
        if self.last_layer_feature != FINAL_NORM:  # absent means the reference meaning
            dfc["last_layer_feature"] = self.last_layer_feature
        cfg = {"architectures": ["DominoDraftModel" if self.has_head else "DFlashDraftModel"],
               "model_type": "qwen3", "block_size": self.block_size}
        if self.num_target_layers is not None:
            cfg["num_target_layers"] = self.num_target_layers
        cfg.update(self.layers.to_dict())
        cfg["dflash_config"] = dfc
        if self.has_head:
            cfg["emb_dim"] = self.emb_dim
        return cfg
