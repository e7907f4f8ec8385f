"""End-to-end decode: speculative (Domino / DFlash, chain / tree) against target-only decoding of
the same model in the same process, with tau and the share of time in draft, verify and
bookkeeping.

CPU mode (default): a small random Qwen3 target + random Domino draft. A random draft is rarely
right, so the rows marked ``oracle`` replace its proposals (after the backbone and the rollout have
run and been paid for) with the target's own greedy continuation, corrupted in
a chosen share of proposals so that tau is about 4.7 or 6.35 (spec §9): they show what the loop delivers at a realistic tau, with every cost
except the draft's accuracy real. Every row checks that its output equals target-only greedy.

GPU shapes (``--gpu-shapes``; the default with ``--device cuda``): Qwen3-8B-shaped random bf16
weights (36 layers, H 4096, GQA 32/8, V 151936) and the Domino-b16 draft shape (5 layers, G 1024,
E 256): per-step time of target decode (1 token), verify (16 tokens), draft (context append of
a+1=5 positions + 16-slot block + rollout of 15 proposals), and the speedup those imply at the tau
values of spec §9: speedup = tau * t_decode / (t_draft + t_verify).

    python -m bench.bench_e2e [--device cpu|cuda] [--gpu-shapes] [--max-new-tokens 64]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.harness import print_table, time_fn, write_results
from domino_kernels.generate import generate
from domino_kernels.model.synthetic import draft_config, qwen3_config, random_pair


class OracleProposals:
    """Chain proposals = the reference continuation with each token independently wrong with
    probability ``p_wrong`` (the first wrong one ends acceptance: tau is about 1 / p_wrong)."""

    def __init__(self, draft, reference, p_wrong, seed=0):
        self.reference, self.p_wrong = reference, p_wrong
        self.rng = np.random.default_rng(seed)
        self.real_block, self.real_chain = draft.block_forward, draft.propose_chain
        self.vocab = draft.cfg.layers.vocab_size
        draft.block_forward, draft.propose_chain = self.block_forward, self.propose_chain

    def block_forward(self, anchor, embed, cache, rows):
        self.rows, self.pos = rows.tolist(), cache.lens[rows].tolist()
        return self.real_block(anchor, embed, cache, rows)

    def propose_chain(self, z, anchor, target, n):
        real = self.real_chain(z, anchor, target, n)   # paid for, then replaced
        out = []
        for r, s in zip(self.rows, self.pos):
            t = self.reference[r][s + 1: s + 1 + n]
            t = t + [0] * (n - len(t))
            for k in np.nonzero(self.rng.random(n) < self.p_wrong)[0]:
                t[k] = (t[k] + 1) % self.vocab
            out.append(t)
        return torch.tensor(out, dtype=torch.int64, device=real.device)


def cpu_rows(args, dev):
    cfg = qwen3_config(vocab=4096, hidden=256, layers=8, heads=8, kv_heads=2, head_dim=32, inter=768)
    dcfg = draft_config(cfg, layers=2, target_layer_ids=(1, 4, 6), emb_dim=64, gru=128)
    target, draft = random_pair(cfg, dcfg, device=dev, dtype=torch.float32)
    rows = []
    for batch in (1, 4):
        g = torch.Generator().manual_seed(batch)
        prompts = [torch.randint(0, 4000, (32 + 7 * i,), generator=g).tolist() for i in range(batch)]
        # the fixed policy: these rows measure the cost of a full draft at a given tau
        kw = dict(max_new_tokens=args.max_new_tokens, ignore_eos=True, spec_policy="fixed")
        generate(target, prompts, max_new_tokens=4)  # warm-up
        base = generate(target, prompts, **kw)
        longer = generate(target, prompts, max_new_tokens=args.max_new_tokens + 20, ignore_eos=True)
        reference = [p + t for p, t in zip(prompts, longer.tokens)]
        runs = [("target-only", base, None)]
        for name, extra in [("domino chain (random draft)", {}), ("dflash chain (random draft)", {"use_head": False}),
                            ("domino tree k2 m16 (random draft)", {"tree_topk": 2, "tree_budget": 16})]:
            runs.append((name, generate(target, prompts, draft=draft, **kw, **extra), None))
        for tau in (4.70, 6.35):  # the Domino / DFlash tau of spec §9
            _, oracle_draft = random_pair(cfg, dcfg, device=dev, dtype=torch.float32)
            OracleProposals(oracle_draft, reference, 1 / tau)
            runs.append((f"domino chain (oracle, tau~{tau})",
                         generate(target, prompts, draft=oracle_draft, **kw), tau))
        for name, res, _ in runs:
            st = res.stats
            busy = st["draft_s"] + st["verify_s"] + st["bookkeeping_s"]
            rows.append({"batch": batch, "mode": name, "tokens_per_s": st["tokens_per_s"],
                         "vs_target": st["tokens_per_s"] / base.stats["tokens_per_s"], "tau": st["tau"],
                         "draft_pct": 100 * st["draft_s"] / busy, "verify_pct": 100 * st["verify_s"] / busy,
                         "bookkeeping_pct": 100 * st["bookkeeping_s"] / busy,
                         "lossless": res.tokens == base.tokens})
    return rows, {"target": cfg, "draft_layers": 2, "max_new_tokens": args.max_new_tokens,
                  "threads": torch.get_num_threads()}


def gpu_shape_rows(args, dev):
    cfg = qwen3_config(vocab=151936, hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, inter=12288,
                       max_pos=40960, dtype="bfloat16")
    dcfg = draft_config(cfg, layers=5, target_layer_ids=(1, 9, 17, 25, 33), emb_dim=256, gru=1024,
                        mask_token_id=151669)
    t0 = time.perf_counter()
    target, draft = random_pair(cfg, dcfg, device=dev, dtype=torch.bfloat16)
    print(f"random Qwen3-8B-shaped target + Domino-b16-shaped draft built in {time.perf_counter() - t0:.1f} s")
    target.capture_layers = list(draft.cfg.target_layer_ids)
    draft.use_gru_table(target)  # what generate() does on a GPU
    rows = []
    for batch in (1, 4):
        ctx = args.context
        cache = target.new_cache(batch, ctx + 64)
        dcache = draft.new_cache(batch, ctx + 64)
        all_rows = torch.arange(batch, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        toks = torch.randint(0, cfg["vocab_size"] * 9 // 10, (batch * ctx,), device=dev, generator=g)
        pos = torch.arange(ctx, device=dev).repeat(batch)
        cu = torch.arange(0, (batch + 1) * ctx, ctx, dtype=torch.int32, device=dev)
        with torch.no_grad():
            _, feats = target.forward(toks, pos, cache, all_rows, cu, logits_rows=cu[1:].long() - 1)
            cache.commit(all_rows, torch.full((batch,), ctx, device=dev))
            n_ctx = ctx - 5  # the draft holds context < ctx - 5; each step appends 5 more
            per_req = feats.view(batch, ctx, -1)
            draft.append_context(per_req[:, :n_ctx].reshape(batch * n_ctx, -1), pos.view(batch, ctx)[:, :n_ctx].reshape(-1),
                                 dcache, all_rows,
                                 torch.arange(0, (batch + 1) * n_ctx, n_ctx, dtype=torch.int32, device=dev))
        anchor = toks[:batch]
        s = cache.lens.long()
        one = torch.arange(batch + 1, dtype=torch.int32, device=dev)
        vt = torch.arange(0, (batch + 1) * 16, 16, dtype=torch.int32, device=dev)
        vpos = (s[:, None] + torch.arange(16, device=dev)).reshape(-1)
        vtok = toks[: batch * 16]
        ctx_feats = feats.view(batch, ctx, -1)[:, ctx - 5:].reshape(batch * 5, -1)
        ctx_pos = (ctx - 5 + torch.arange(5, device=dev)).repeat(batch)
        ctx_cu = torch.arange(0, (batch + 1) * 5, 5, dtype=torch.int32, device=dev)

        def decode():  # target-only step: one token per request (writes scratch past lens)
            return target.forward(anchor, s, cache, all_rows, one)

        def verify():  # 16 verify tokens per request, logits at every node + feature capture
            return target.forward(vtok, vpos, cache, all_rows, vt)

        def draft_step():  # context append (a+1 = 5), 16-slot block, rollout of 15 proposals
            draft.append_context(ctx_feats, ctx_pos, dcache, all_rows, ctx_cu)
            dcache.lens -= 5  # keep the committed length fixed across repetitions
            z = draft.block_forward(anchor, target.embed, dcache, all_rows)
            return draft.propose_chain(z, anchor, target, 15)

        with torch.no_grad():
            t = {name: time_fn(fn, warmup=2, iters=args.iters, device=dev)["median_us"]
                 for name, fn in [("decode", decode), ("verify16", verify), ("draft", draft_step)]}
        for tau in (4.03, 4.70, 6.35):
            rows.append({"batch": batch, "context": ctx, "decode_us": t["decode"], "verify16_us": t["verify16"],
                         "draft_us": t["draft"], "tau": tau,
                         "implied_speedup": tau * t["decode"] / (t["draft"] + t["verify16"])})
    return rows, {"shapes": "Qwen3-8B target, Domino-b16 draft (random bf16 weights)",
                  "tau_sources": "spec §9: 4.03 DFlash / 4.70 Domino (Fig. 1, Qwen3-8B), 6.35 DFlash GSM8K SGLang"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-shapes", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (tiny models: 1)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.gpu_shapes or dev.type == "cuda":
        rows, extra = gpu_shape_rows(args, dev)
        print_table(rows, ["batch", "context", "decode_us", "verify16_us", "draft_us", "tau", "implied_speedup"])
        print(f"wrote {write_results('e2e-gpu-shapes', rows, extra, device=dev)}")
        return
    torch.set_num_threads(args.threads)
    rows, extra = cpu_rows(args, dev)
    print_table(rows, ["batch", "mode", "tokens_per_s", "vs_target", "tau", "draft_pct", "verify_pct",
                       "bookkeeping_pct", "lossless"])
    print(f"wrote {write_results('e2e', rows, extra, device=dev)}")


if __name__ == "__main__":
    main()
