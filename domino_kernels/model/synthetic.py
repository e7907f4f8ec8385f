"""Deterministic tiny checkpoints in the published formats (a Hugging Face Qwen3 directory and a
Domino draft directory), written without transformers. The demo falls back to them when the build
ships no trained pair (``domino_kernels.assets``); the end-to-end benchmark uses them at chosen
shapes."""
from __future__ import annotations

import json
import os

import torch


def qwen3_config(vocab=512, hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, inter=384,
                 max_pos=4096, tie=False, dtype="float32", eos=None) -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
            "hidden_act": "silu", "max_position_embeddings": max_pos, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": tie, "dtype": dtype, "eos_token_id": eos, "bos_token_id": None}


def _layer_tensors(prefix, cfg, rand, ones):
    h, d, i = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    hq, hkv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return {prefix + "input_layernorm.weight": ones(h),
            prefix + "post_attention_layernorm.weight": ones(h),
            prefix + "self_attn.q_proj.weight": rand(hq, h), prefix + "self_attn.k_proj.weight": rand(hkv, h),
            prefix + "self_attn.v_proj.weight": rand(hkv, h), prefix + "self_attn.o_proj.weight": rand(h, hq),
            prefix + "self_attn.q_norm.weight": ones(d), prefix + "self_attn.k_norm.weight": ones(d),
            prefix + "mlp.gate_proj.weight": rand(i, h), prefix + "mlp.up_proj.weight": rand(i, h),
            prefix + "mlp.down_proj.weight": rand(h, i)}


def _writer(seed, std, device="cpu", dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(seed)
    return lambda *shape: (torch.randn(*shape, generator=g, device=device, dtype=dtype) * std)


def target_tensors(cfg: dict, seed: int = 0, std: float = 0.05, device="cpu", dtype=torch.float32) -> dict:
    """A random Hugging Face Qwen3 state dict for ``cfg`` (norm weights 1)."""
    rand = _writer(seed, std, device, dtype)
    v, h = cfg["vocab_size"], cfg["hidden_size"]
    ones = lambda n: torch.ones(n, device=device, dtype=dtype)  # noqa: E731
    t = {"model.embed_tokens.weight": rand(v, h) * 20, "model.norm.weight": ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        t.update(_layer_tensors(f"model.layers.{i}.", cfg, rand, ones))
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rand(v, h)
    return t


def draft_config(target_cfg: dict, *, layers=2, target_layer_ids=(1, 2), block_size=16, emb_dim=64, gru=128,
                 head=True, mask_token_id=None, intermediate_size=None) -> dict:
    c = dict(target_cfg, num_hidden_layers=layers)
    if intermediate_size:
        c["intermediate_size"] = intermediate_size
    dfc = {"mask_token_id": c["vocab_size"] - 1 if mask_token_id is None else mask_token_id,
           "target_layer_ids": list(target_layer_ids), "shift_label": True}
    if head:
        dfc.update({"projector_type": "domino", "pure_draft_prefix_len": 1, "emb_dim": emb_dim,
                    "gru_hidden_dim": gru})
    return dict(c, architectures=["DominoDraftModel" if head else "DFlashDraftModel"], block_size=block_size,
                num_target_layers=target_cfg["num_hidden_layers"], dflash_config=dfc)


def draft_tensors(cfg: dict, seed: int = 1, std: float = 0.05, device="cpu", dtype=torch.float32) -> dict:
    """A random draft state dict (public flat key layout) for a ``draft_config`` dict."""
    rand = _writer(seed, std, device, dtype)
    ones = lambda n: torch.ones(n, device=device, dtype=dtype)  # noqa: E731
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    dfc = cfg["dflash_config"]
    t = {"fc.weight": rand(h, len(dfc["target_layer_ids"]) * h), "hidden_norm.weight": ones(h),
         "norm.weight": ones(h)}
    for i in range(cfg["num_hidden_layers"]):
        t.update(_layer_tensors(f"layers.{i}.", cfg, rand, ones))
    if dfc.get("projector_type"):
        g, e = dfc["gru_hidden_dim"], dfc["emb_dim"]
        t.update({"prefix_gru.weight_ih_l0": rand(3 * g, h), "prefix_gru.weight_hh_l0": rand(3 * g, g),
                  "embed_proj.0.weight": rand(e, h + g), "embed_proj.2.weight": rand(v, e)})
    return t


def _save(path, cfg, tensors):
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    dt = getattr(torch, cfg["dtype"])
    save_file({k: x.to(dt).contiguous() for k, x in tensors.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def write_target(path: str, cfg: dict, seed: int = 0, std: float = 0.05) -> None:
    _save(path, cfg, target_tensors(cfg, seed, std))


def write_draft(path: str, target_cfg: dict, seed: int = 1, std: float = 0.05, **kw) -> None:
    cfg = draft_config(target_cfg, **kw)
    _save(path, cfg, draft_tensors(cfg, seed, std))


def random_pair(cfg: dict, draft_cfg: dict, device="cpu", dtype=torch.bfloat16, seed=0):
    """An in-memory random target + draft (no files): for benchmarks at real shapes."""
    from .config import DraftConfig, Qwen3Config
    from .dflash import draft_from_state
    from .qwen3 import qwen3_from_state

    tcfg = Qwen3Config.from_dict(cfg)
    tcfg.dtype = dtype
    target = qwen3_from_state(tcfg, target_tensors(cfg, seed, 0.02, device, dtype), "random target", device)
    dcfg = DraftConfig.from_dict(draft_cfg)
    draft = draft_from_state(dcfg, draft_tensors(draft_cfg, seed + 1, 0.02, device, dtype), target, "random draft")
    return target, draft


def ensure_demo_pair(cache_dir: str) -> tuple[str, str]:
    """Create (once) the demo's tiny random target + Domino draft under ``cache_dir``."""
    target, draft = os.path.join(cache_dir, "target"), os.path.join(cache_dir, "draft")
    cfg = qwen3_config()
    if not os.path.exists(os.path.join(target, "config.json")):
        write_target(target, cfg)
    if not os.path.exists(os.path.join(draft, "config.json")):
        write_draft(draft, cfg)
    return target, draft
