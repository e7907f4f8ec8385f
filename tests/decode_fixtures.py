"""Tiny checkpoints the decode tests write: Qwen3 targets saved by transformers, and Domino/DFlash
drafts written in the public format (flat keys, dflash_config)."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


def make_target(path, *, vocab=97, hidden=32, layers=4, heads=4, kv_heads=2, head_dim=8, inter=64,
                tie=False, seed=0, init_range=0.02, max_pos=512, form=5, eos=None, dtype=torch.float32):
    """A random Qwen3ForCausalLM saved with save_pretrained; ``form=4`` rewrites the config in the
    transformers 4 form (top-level rope_theta, torch_dtype). Returns the HF model (eval, fp32)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=head_dim, max_position_embeddings=max_pos, tie_word_embeddings=tie,
                      initializer_range=init_range, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      eos_token_id=eos, bos_token_id=None, pad_token_id=None)
    model = Qwen3ForCausalLM(cfg).to(dtype).eval()
    model.save_pretrained(path, safe_serialization=True)
    if form == 4:
        p = os.path.join(path, "config.json")
        c = json.load(open(p))
        c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
        c["torch_dtype"] = c.pop("dtype", "float32")
        json.dump(c, open(p, "w"))
    return model.float()


def draft_tensors(target_hidden, *, layers=2, heads=4, kv_heads=2, head_dim=8, inter=64, n_target=2,
                  vocab=97, emb_dim=16, gru=24, head=True, seed=1, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    h = target_hidden
    t = {"fc.weight": r(h, n_target * h), "hidden_norm.weight": 1 + r(h), "norm.weight": 1 + r(h)}
    for i in range(layers):
        p = f"layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + r(h), p + "post_attention_layernorm.weight": 1 + r(h),
                  p + "self_attn.q_proj.weight": r(heads * head_dim, h),
                  p + "self_attn.k_proj.weight": r(kv_heads * head_dim, h),
                  p + "self_attn.v_proj.weight": r(kv_heads * head_dim, h),
                  p + "self_attn.o_proj.weight": r(h, heads * head_dim),
                  p + "self_attn.q_norm.weight": 1 + r(head_dim), p + "self_attn.k_norm.weight": 1 + r(head_dim),
                  p + "mlp.gate_proj.weight": r(inter, h), p + "mlp.up_proj.weight": r(inter, h),
                  p + "mlp.down_proj.weight": r(h, inter)})
    if head:
        t.update({"prefix_gru.weight_ih_l0": r(3 * gru, h), "prefix_gru.weight_hh_l0": r(3 * gru, gru),
                  "embed_proj.0.weight": r(emb_dim, h + gru), "embed_proj.2.weight": r(vocab, emb_dim)})
    return t


def make_draft(path, target_hidden, *, target_layer_ids=(0, 2), layers=2, heads=4, kv_heads=2, head_dim=8,
               inter=64, vocab=97, mask_token_id=96, emb_dim=16, gru=24, head=True, shift_label=True,
               block_size=16, projector="domino", prefix="", seed=1, dtype=torch.float32, shards=1,
               max_pos=512):
    os.makedirs(path, exist_ok=True)
    t = draft_tensors(target_hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                      inter=inter, n_target=len(target_layer_ids), vocab=vocab, emb_dim=emb_dim, gru=gru,
                      head=head, seed=seed)
    if prefix:
        t = {(prefix + k if k.startswith(("prefix_gru", "embed_proj")) else k): v for k, v in t.items()}
    t = {k: v.to(dtype).contiguous() for k, v in t.items()}
    dfc = {"mask_token_id": mask_token_id, "target_layer_ids": list(target_layer_ids),
           "shift_label": shift_label}
    if head:
        dfc.update({"projector_type": projector, "pure_draft_prefix_len": 1, "emb_dim": emb_dim,
                    "gru_hidden_dim": gru})
    cfg = {"model_type": "qwen3", "architectures": ["DominoDraftModel" if head else "DFlashDraftModel"],
           "block_size": block_size, "num_target_layers": 4, "num_hidden_layers": layers,
           "hidden_size": target_hidden, "intermediate_size": inter, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "head_dim": head_dim, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "max_position_embeddings": max_pos, "vocab_size": vocab,
           "tie_word_embeddings": False, "dtype": str(dtype).replace("torch.", ""), "dflash_config": dfc}
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    names = sorted(t)
    if shards == 1:
        save_file(t, os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            part = {n: t[n] for n in names[s::shards]}
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, os.path.join(path, fname))
            weight_map.update({n: fname for n in part})
        json.dump({"metadata": {}, "weight_map": weight_map},
                  open(os.path.join(path, "model.safetensors.index.json"), "w"))
    return t


def single_thread():
    """Tiny models on a shared 2-core box: one intra-op thread avoids thread-pool spin contention
    (a 17x32x64 matmul takes 15 us on one thread and ms on two when the cores are busy)."""
    import pytest

    @pytest.fixture(autouse=True, scope="module")
    def _single_thread():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    return _single_thread
