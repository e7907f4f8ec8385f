"""Benchmark domino::tree_attention (tree mask over a paged KV cache) against
torch.nn.functional.scaled_dot_product_attention with an explicit dense boolean mask.

Shapes: Qwen3-8B attention (32 query heads, 8 KV heads, head_dim 128), bf16, a random tree of T
new tokens per request after a prefix of L cached tokens, B requests. Ours reads the prefix from a
paged cache (page size 16, pages in random order) with the packed [T, ceil(T/32)] tree mask; the
baseline gets a contiguous [B, Hkv, L+T, D] K/V (GQA via enable_gqa) and a dense [B, 1, T, L+T]
boolean mask, i.e. the layout most favourable to it. Both run in the same process on the same
data. Also reports the bytes of K/V read per second against the measured read ceiling (the
prefix is read once per KV head: the lower bound on traffic).

    python -m bench.bench_attention [--device cpu|cuda] [--iters 5]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import domino_kernels as dk
from bench.harness import print_table, read_bandwidth_gbs, time_fn, write_results
from tests.attention_cases import make_case

HQ, HKV, D, PAGE = 32, 8, 128, 16
CPU_SHAPES = [(1, 2048, 16), (1, 2048, 64), (8, 2048, 16), (8, 2048, 64)]  # (B, prefix, T)
GPU_SHAPES = CPU_SHAPES + [(8, 8192, 16), (1, 8192, 16), (8, 8192, 64), (32, 4096, 16)]


def dense_inputs(case, batch, prefix, t):
    """Contiguous K/V [B, Hkv, L+T, D], q [B, Hq, T, D] and the dense bool mask [B, 1, T, L+T]."""
    from domino_kernels.reference.attention import gather_kv, new_token_mask

    ks, vs, masks = [], [], []
    for b in range(batch):
        ks.append(gather_kv(case.k_cache, case.block_table, b, prefix + t))
        vs.append(gather_kv(case.v_cache, case.block_table, b, prefix + t))
        rows = case.tree_mask[b * t:(b + 1) * t].cpu()
        masks.append(torch.cat([torch.ones(t, prefix, dtype=torch.bool),
                                new_token_mask(1, t, rows)], dim=1))
    k = torch.stack(ks).transpose(1, 2).contiguous()
    v = torch.stack(vs).transpose(1, 2).contiguous()
    q = case.q.view(batch, t, HQ, D).transpose(1, 2).contiguous()
    mask = torch.stack(masks)[:, None].to(k.device)
    return q, k, v, mask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    ceiling = read_bandwidth_gbs(dev)
    print(f"device {dev}: measured read bandwidth ceiling {ceiling:.1f} GB/s")
    shapes = GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES
    rows = []
    for batch, prefix, t in shapes:
        case = make_case([prefix] * batch, [t] * batch, hq=HQ, hkv=HKV, d=D, page_size=PAGE,
                         dtype=dtype, seed=batch * 1000 + t, tree=True).to(dev)
        q, k, v, mask = dense_inputs(case, batch, prefix, t)
        ours = lambda: dk.tree_attention(*case.args(), mode="tree", tree_mask=case.tree_mask)  # noqa: E731
        base = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
        # Same answer before timing (bf16 output rounding apart).
        got = ours().view(batch, t, HQ, D).transpose(1, 2).float()
        torch.testing.assert_close(got, base().float(), atol=3e-2, rtol=3e-2)
        t_ours = time_fn(ours, iters=args.iters, device=dev)
        t_base = time_fn(base, iters=args.iters, device=dev)
        kv_bytes = 2 * batch * (prefix + t) * HKV * D * case.k_cache.element_size()
        gbs = kv_bytes / (t_ours["median_us"] * 1e-6) / 1e9
        flops = 4 * batch * HQ * t * (prefix + t) * D  # QK^T and PV, masked keys included
        rows.append({"B": batch, "prefix": prefix, "T": t, "ours_us": t_ours["median_us"],
                     "ours_p90_us": t_ours["p90_us"], "sdpa_mask_us": t_base["median_us"],
                     "speedup": t_base["median_us"] / t_ours["median_us"],
                     "ours_GFLOPs": flops / (t_ours["median_us"] * 1e-6) / 1e9, "kv_GBps": gbs,
                     "pct_of_read_ceiling": 100 * gbs / ceiling})
    print_table(rows, ["B", "prefix", "T", "ours_us", "ours_p90_us", "sdpa_mask_us", "speedup",
                       "ours_GFLOPs", "kv_GBps", "pct_of_read_ceiling"])
    path = write_results("attention", rows,
                         {"heads": f"{HQ}q/{HKV}kv", "head_dim": D, "dtype": args.dtype,
                          "page_size": PAGE, "mask": "random tree (tree mode)",
                          "read_ceiling_GBps": ceiling,
                          "baseline": "F.scaled_dot_product_attention, contiguous K/V, dense bool "
                                      "mask [B,1,T,L+T], enable_gqa"},
                         device=dev)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
