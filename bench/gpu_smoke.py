"""One small CUDA case of every op, for `compute-sanitizer --tool memcheck` in bench/gpu_check.sh.

Each case runs the op on a small CUDA input, synchronises, and compares with the CPU kernel, so a
memory error, a launch failure or a CPU/CUDA mismatch all show. Add one case per op family.
"""
from __future__ import annotations

import os
import sys

import torch

# Run as `python bench/gpu_smoke.py`: make the repository root importable (the in-place build of
# domino_kernels, and tests.attention_cases).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import domino_kernels as dk  # noqa: E402,F401

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=g).to(torch.bfloat16)
    args = (logits, torch.tensor([0.0, 0.7, 1.0, 1.3]), torch.tensor([0, 10, 0, 50]),
            torch.tensor([1.0, 0.9, 0.5, 1.0]), torch.tensor([0.0, 0.0, 0.05, 0.0]),
            torch.arange(4), torch.zeros(4, dtype=torch.int64))
    out = torch.ops.domino.sample(*[a.cuda() for a in args]).cpu()
    assert torch.equal(out, torch.ops.domino.sample(*args)), "sample: CUDA != CPU"


@case
def tree_attention():
    from tests.attention_cases import make_case

    for mode, prefix, new, dtype in [("tree", [37, 0, 5, 3000], [5, 3, 1, 16], torch.bfloat16),
                                     ("causal", [0, 9], [70, 0], torch.float16),
                                     ("full", [100], [16], torch.float32)]:
        c = make_case(prefix, new, hq=8, hkv=2, d=128, page_size=16, dtype=dtype, seed=1,
                      tree=(mode == "tree"))
        g = c.to("cuda")
        out, lse = dk.tree_attention(*g.args(), mode=mode, tree_mask=g.tree_mask, return_lse=True)
        ref_out, ref_lse = dk.tree_attention(*c.args(), mode=mode, tree_mask=c.tree_mask,
                                             return_lse=True)
        assert torch.allclose(out.cpu().float(), ref_out.float(), atol=2e-2, rtol=2e-2), \
            f"tree_attention ({mode}): CUDA != CPU"
        assert torch.allclose(lse.cpu(), ref_lse, atol=1e-3), f"tree_attention ({mode}): lse"
    # Bad device values (page ids past the cache, lengths past capacity): clamped, never read.
    bt = g.block_table.clone()
    bt[0, 0] = 1 << 30
    kv = g.kv_lens.clone()
    kv[0] = 1 << 30
    dk.tree_attention(g.q, g.k_cache, g.v_cache, bt, kv, g.q_cu_lens, mode="full")


@case
def append_kv_and_tree_info():
    from tests.attention_cases import make_case, random_parents

    c = make_case([5, 0, 17], [3, 40, 0], hq=4, hkv=2, d=64, page_size=4, seed=2)
    g = c.to("cuda")
    kc, vc = torch.zeros_like(g.k_cache), torch.zeros_like(g.v_cache)
    dk.append_kv(g.k_new, g.v_new, kc, vc, g.block_table, g.kv_lens, g.q_cu_lens)
    kc_cpu, vc_cpu = torch.zeros_like(c.k_cache), torch.zeros_like(c.v_cache)
    dk.append_kv(c.k_new, c.v_new, kc_cpu, vc_cpu, c.block_table, c.kv_lens, c.q_cu_lens)
    assert torch.equal(kc.cpu(), kc_cpu) and torch.equal(vc.cpu(), vc_cpu), "append_kv: CUDA != CPU"
    gen = torch.Generator().manual_seed(3)
    parents = torch.stack([random_parents(70, gen) for _ in range(3)])
    num, prefix = torch.tensor([70, 20, 0]), torch.tensor([1, 2, 3])
    for a, b in zip(dk.tree_info(parents.cuda(), num.cuda(), prefix.cuda()),
                    dk.tree_info(parents, num, prefix)):
        assert torch.equal(a.cpu(), b), "tree_info: CUDA != CPU"


@case
def verify():
    from domino_kernels import reference

    g = torch.Generator().manual_seed(1)
    B, T, V = 6, 8, 3000
    tokens = torch.randint(0, V, (B, T), generator=g)
    parents = torch.zeros(B, T, dtype=torch.int64)
    for i in range(1, T):
        parents[:, i] = torch.randint(0, i, (B,), generator=g)
    tokens[4, 3] = 10**9  # a bad id read from device memory: request 4 must come back invalid
    logits = torch.randn(B, T, V, generator=g).to(torch.bfloat16)
    q = torch.softmax(torch.randn(B, T, V, generator=g), -1)
    for rule in range(4):
        args = (tokens, parents, torch.full((B,), T), logits,
                torch.tensor([0.0, 0.7, 1.0, 1.3, 1.0, 0.9]), torch.tensor([0, 10, 0, 50, 0, 5]),
                torch.tensor([1.0, 0.9, 0.5, 1.0, 1.0, 0.8]), q if rule >= 2 else None, None,
                torch.arange(B), torch.zeros(B, dtype=torch.int64), rule)
        out = torch.ops.domino.verify(*[a.cuda() if isinstance(a, torch.Tensor) else a
                                        for a in args])
        assert out[0][4].item() == -1, "verify: bad token id not flagged on CUDA"
        ref = reference.verify(*args)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(out, ref)), \
            f"verify rule {rule}: CUDA != reference"


@case
def domino_rollout():
    from tests.test_rollout import make_head

    cpu = make_head(B=5, S=16, H=64, G=32, E=32, V=1500, seed=40, dtype=torch.bfloat16)
    head, emb, hidden, base, anchor = cpu
    ghead = dk.DominoHeadWeights(*(t.cuda() for t in head.tensors()))
    g = (ghead, emb.cuda(), hidden.cuda(), base.cuda(), anchor.cuda())
    temp = torch.tensor([0.0, 0.8, 1.0, 0.0, 1.5])
    s = dict(temperature=temp, seed=torch.arange(5), offset=2)
    sg = dict(temperature=temp.cuda(), seed=torch.arange(5).cuda(), offset=2)
    c = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=12, return_q_rows=True, **s)
    o = dk.domino_rollout(g[2], g[3], g[4], g[0], g[1], num_proposals=12, return_q_rows=True, **sg)
    assert torch.equal(o[0].cpu(), c[0]), "domino_rollout: CUDA != CPU tokens"
    assert torch.allclose(o[2].cpu(), c[2], atol=1e-4), "domino_rollout: q_rows"
    c = dk.domino_rollout(hidden, base, anchor, head, emb, num_proposals=12, candidates=40)
    o = dk.domino_rollout(g[2], g[3], g[4], g[0], g[1], num_proposals=12, candidates=40)
    assert torch.equal(o[0].cpu(), c[0]), "domino_rollout (shortlist): CUDA != CPU"
    kw = dict(topk=3, depth=5, budget=30, return_q_rows=True)
    ct = dk.domino_tree_rollout(hidden, base, anchor, head, emb, **kw)
    gt = dk.domino_tree_rollout(g[2], g[3], g[4], g[0], g[1], **kw)
    for a, b in zip(gt, ct):
        assert torch.allclose(a.cpu(), b, atol=1e-4) if a.is_floating_point() else torch.equal(a.cpu(), b), \
            "domino_tree_rollout: CUDA != CPU"
    dk.domino_tree_rollout(g[2], g[3], g[4], g[0], g[1], gru_table=dk.build_gru_table(g[1], ghead.w_ih), **kw)
    # Bad device values: anchors outside [0, V) feed a zero GRU input, never an out-of-bounds read.
    dk.domino_rollout(g[2], g[3], torch.tensor([-5, 1 << 40, 3, 0, 1499], device="cuda"), g[0], g[1],
                      num_proposals=12)


def main(names) -> int:
    failed = []
    for name in names or CASES:
        try:
            CASES[name]()
            torch.cuda.synchronize()
            print(f"[gpu_smoke] {name}: ok")
        except Exception as e:  # report every case, then fail
            failed.append(name)
            print(f"[gpu_smoke] {name}: FAILED: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
