"""Benchmark domino::verify against the eager PyTorch composition an engine writes.

Baselines (same process, same inputs), all over the full [B, T, V] logits as engines do:
  greedy       argmax over every node, vectorised prefix match (vLLM/SGLang greedy path);
  target_only  temperature, sort-based top-k/top-p renormalisation, softmax over every node,
               torch.multinomial at every node, vectorised prefix match (the HF/DFlash reference);
  rejection    the same processed probabilities, Leviathan/Chen accept test at every position,
               relu(p - q) residual rows for every position, multinomial from the one needed
               (vLLM's recovered-token scheme).
Ours applies temperature/top-k/top-p inside the op and reads only the visited nodes' rows.
Drafts are chains whose tokens agree with the target's preferred token at 80 % of positions, so
acceptance lengths are realistic. Reports microseconds, the speedup, and the bytes of logits
(plus draft rows) of the visited nodes per second against the measured read ceiling.

    python -m bench.bench_verify [--device cpu|cuda] [--vocab 151936] [--shapes 1x8,8x16,...]
"""
from __future__ import annotations

import argparse

import torch

import domino_kernels as dk
from bench.harness import print_table, read_bandwidth_gbs, time_fn, write_results

RULES = {"greedy": 0, "target_only": 1, "rejection": 2}


def processed_probs(logits, temp, top_k, top_p):
    """Eager: temperature, sort-based top-k and top-p renormalisation, softmax. [B, T, V]."""
    x = logits.float() / temp[:, None, None]
    if top_k is None and top_p is None:
        return torch.softmax(x, -1)
    sx, idx = torch.sort(x, -1, descending=True)
    if top_k is not None:
        ranks = torch.arange(x.shape[-1], device=x.device)
        sx = sx.masked_fill(ranks >= top_k[:, None, None], float("-inf"))
    if top_p is not None:
        sp = torch.softmax(sx, -1)
        sx = sx.masked_fill(sp.cumsum(-1) - sp >= top_p[:, None, None], float("-inf"))
    return torch.softmax(torch.full_like(x, float("-inf")).scatter(-1, idx, sx), -1)


def emit(accept_len, accepted, last):
    B, T = accepted.shape[0], accepted.shape[1] + 1
    pos = torch.arange(T, device=accepted.device)[None, :]
    padded = torch.cat([accepted, last[:, None]], 1)
    out = torch.where(pos < accept_len[:, None], torch.cat([accepted, accepted[:, -1:]], 1), -1)
    return torch.where(pos == accept_len[:, None], last[:, None], out)


def eager_greedy(tokens, logits):
    am = logits.argmax(-1)
    match = (tokens[:, 1:] == am[:, :-1]).long()
    acc = match.cumprod(1).sum(1)
    return acc, emit(acc, tokens[:, 1:], am.gather(1, acc[:, None]).squeeze(1))


def eager_target_only(tokens, logits, temp, top_k, top_p):
    B, T, V = logits.shape
    p = processed_probs(logits, temp, top_k, top_p)
    t = torch.multinomial(p.view(-1, V), 1).view(B, T)
    acc = (tokens[:, 1:] == t[:, :-1]).long().cumprod(1).sum(1)
    return acc, emit(acc, tokens[:, 1:], t.gather(1, acc[:, None]).squeeze(1))


def eager_rejection(tokens, logits, q, temp, top_k, top_p):
    B, T, V = logits.shape
    p = processed_probs(logits, temp, top_k, top_p)
    px = p[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1)
    qx = q[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(-1)
    u = torch.rand(B, T - 1, device=logits.device)
    acc = (u * qx < px).long().cumprod(1).sum(1)
    res = (p - q).clamp_min(0)
    res[:, -1] = p[:, -1]  # all accepted: the bonus comes from the last node's target
    rows = res[torch.arange(B, device=logits.device), acc]
    last = torch.multinomial(rows, 1).squeeze(1)
    return acc, emit(acc, tokens[:, 1:], last)


def make_inputs(B, T, V, dev, seed):
    """bf16 logits [B, T, V]; a chain of drafts agreeing with the target's boosted token at 80 %
    of the positions; draft rows q [B, T, V] (softmax of a perturbation of the target)."""
    g = torch.Generator(device=dev).manual_seed(seed)  # generated on the device: fast on a GPU
    logits = torch.randn(B, T, V, generator=g, device=dev) * 2.0
    tokens = torch.randint(0, V, (B, T), generator=g, device=dev)
    agree = torch.rand(B, T, generator=g, device=dev) < 0.8
    rows = torch.arange(B, device=dev)
    for i in range(T - 1):
        # node i's row prefers token tokens[:, i + 1] (boost) where the draft agrees
        logits[rows, i, tokens[:, i + 1]] += torch.where(agree[:, i + 1], 14.0, 0.0)
    q = torch.softmax(logits + torch.randn(B, T, V, generator=g, device=dev), -1)
    return tokens, logits.to(torch.bfloat16), q


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--shapes", default=None,
                    help="BxT list; default CPU: 1x8,1x16,8x8,8x16; CUDA: all of B in {1,8,64} "
                         "x T in {8,16,64}")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.shapes is None:
        args.shapes = ("1x8,1x16,8x8,8x16" if dev.type == "cpu" else
                       ",".join(f"{b}x{t}" for b in (1, 8, 64) for t in (8, 16, 64)))
    ceiling = read_bandwidth_gbs(dev)
    print(f"device {dev}: measured read bandwidth ceiling {ceiling:.1f} GB/s")
    rows = []
    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        tokens, logits, q = make_inputs(B, T, args.vocab, dev, seed=B * 1000 + T)
        parents = dk.chain_parents(B, T, dev)
        nn = torch.full((B,), T, dtype=torch.int64, device=dev)
        seed = torch.arange(B, dtype=torch.int64, device=dev)
        offset = torch.zeros(B, dtype=torch.int64, device=dev)
        for rule, temp_v, k, p in [("greedy", 0.0, None, None), ("target_only", 0.8, None, None),
                                   ("target_only", 0.8, 50, 0.9), ("rejection", 0.8, None, None),
                                   ("rejection", 0.8, 50, 0.9)]:
            temp = torch.full((B,), temp_v, device=dev)
            top_k = None if k is None else torch.full((B,), k, dtype=torch.int64, device=dev)
            top_p = None if p is None else torch.full((B,), p, device=dev)
            dq = q if rule == "rejection" else None
            ours = lambda: torch.ops.domino.verify(  # noqa: E731
                tokens, parents, nn, logits, temp, top_k, top_p, dq, None, seed, offset,
                RULES[rule])
            if rule == "greedy":
                base = lambda: eager_greedy(tokens, logits)  # noqa: E731
            elif rule == "target_only":
                base = lambda: eager_target_only(tokens, logits, temp, top_k, top_p)  # noqa: E731
            else:
                base = lambda: eager_rejection(tokens, logits, q, temp, top_k, top_p)  # noqa: E731
            acc = ours()[0]
            visited = int((acc + 1).sum())
            t_ours = time_fn(ours, iters=args.iters, device=dev)
            t_base = time_fn(base, warmup=1, iters=max(3, args.iters // 3), device=dev)
            nbytes = visited * args.vocab * (logits.element_size() + (4 if dq is not None else 0))
            gbs = nbytes / (t_ours["median_us"] * 1e-6) / 1e9
            filters = "none" if k is None else f"top_k={k},top_p={p}"
            rows.append({"B": B, "T": T, "rule": rule, "filters": filters,
                         "mean_accept": float(acc.float().mean()),
                         "ours_us": t_ours["median_us"], "ours_p90_us": t_ours["p90_us"],
                         "eager_us": t_base["median_us"],
                         "speedup": t_base["median_us"] / t_ours["median_us"],
                         "visited_GBps": gbs, "pct_of_read_ceiling": 100 * gbs / ceiling})
            print_table(rows[-1:], list(rows[-1].keys()))
    print()
    print_table(rows, ["B", "T", "rule", "filters", "mean_accept", "ours_us", "eager_us",
                       "speedup", "visited_GBps", "pct_of_read_ceiling"])
    path = write_results("verify", rows, {
        "vocab": args.vocab, "logits_dtype": "bfloat16", "draft_probs_dtype": "float32",
        "read_ceiling_GBps": ceiling, "drafts": "chains, 80% agreement with the target's boost",
        "baseline": "eager torch over all [B,T,V]: sort-based top-k/top-p, softmax, "
                    "multinomial/argmax per node, vectorised prefix match / accept test"},
        device=dev)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
