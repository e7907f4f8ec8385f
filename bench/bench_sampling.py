"""Benchmark domino::sample against the eager PyTorch composition an engine writes.

Baseline (what vLLM/SGLang-style samplers do without a fused kernel): divide by temperature,
sort-based top-k/top-p masking, softmax, torch.multinomial. Both run in the same process on the
same logits. Also reports bytes of logits read per second against the measured read ceiling.

    python -m bench.bench_sampling [--device cpu|cuda] [--vocab 151936] [--batches 1,8,64]
"""
from __future__ import annotations

import argparse

import torch

import domino_kernels as dk
from bench.harness import print_table, read_bandwidth_gbs, time_fn, write_results


def eager_sample(logits, temperature, top_k, top_p):
    """Eager PyTorch: temperature, sort-based top-k and top-p, softmax, multinomial."""
    x = logits.float() / temperature[:, None]
    sorted_x, idx = torch.sort(x, dim=-1, descending=True)
    ranks = torch.arange(x.shape[-1], device=x.device)[None, :]
    sorted_x = sorted_x.masked_fill(ranks >= top_k[:, None], float("-inf"))
    probs = torch.softmax(sorted_x, dim=-1)
    cum = probs.cumsum(-1)
    sorted_x = sorted_x.masked_fill((cum - probs) >= top_p[:, None], float("-inf"))
    probs = torch.softmax(sorted_x, dim=-1)
    choice = torch.multinomial(probs, 1)
    return idx.gather(-1, choice).squeeze(-1)


def eager_sample_plain(logits, temperature):
    return torch.multinomial(torch.softmax(logits.float() / temperature[:, None], -1), 1).squeeze(-1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    ceiling = read_bandwidth_gbs(dev)
    print(f"device {dev}: measured read bandwidth ceiling {ceiling:.1f} GB/s")
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        # LLM-like logits: a few large values over a broad low tail.
        logits = (torch.randn(b, args.vocab, generator=g) * 2.0).to(torch.bfloat16).to(dev)
        seed = torch.arange(b, dtype=torch.int64, device=dev)
        offset = torch.zeros(b, dtype=torch.int64, device=dev)
        temp = torch.full((b,), 0.8, device=dev)
        for name, k, p in [("plain", 0, 1.0), ("top_k=50", 50, 1.0), ("top_p=0.9", 0, 0.9),
                           ("top_k=50,top_p=0.9", 50, 0.9)]:
            top_k = torch.full((b,), k, dtype=torch.int64, device=dev)
            top_p = torch.full((b,), p, device=dev)
            ours = lambda: torch.ops.domino.sample(logits, temp, top_k, top_p, None, seed, offset)  # noqa: E731
            if k == 0 and p == 1.0:
                base = lambda: eager_sample_plain(logits, temp)  # noqa: E731
            else:
                kk = torch.where(top_k > 0, top_k, torch.full_like(top_k, args.vocab))
                base = lambda: eager_sample(logits, temp, kk, top_p)  # noqa: E731
            t_ours = time_fn(ours, iters=args.iters, device=dev)
            t_base = time_fn(base, iters=max(3, args.iters // 2), device=dev)
            nbytes = logits.numel() * logits.element_size()
            gbs = nbytes / (t_ours["median_us"] * 1e-6) / 1e9
            rows.append({"batch": b, "filters": name, "ours_us": t_ours["median_us"],
                         "ours_p10_us": t_ours["p10_us"], "ours_p90_us": t_ours["p90_us"],
                         "eager_us": t_base["median_us"], "speedup": t_base["median_us"] / t_ours["median_us"],
                         "logits_GBps": gbs, "pct_of_read_ceiling": 100 * gbs / ceiling})
    print_table(rows, ["batch", "filters", "ours_us", "ours_p90_us", "eager_us", "speedup",
                       "logits_GBps", "pct_of_read_ceiling"])
    path = write_results("sampling", rows, {"vocab": args.vocab, "logits_dtype": "bfloat16",
                                            "read_ceiling_GBps": ceiling,
                                            "baseline": "eager torch: sort-based top-k/top-p, softmax, multinomial"},
                         device=dev)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
