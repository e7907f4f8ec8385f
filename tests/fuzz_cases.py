"""Malformed calls of the raw ``torch.ops.domino`` ops, for tests/test_fuzz_ops.py.

Run as ``python -m tests.fuzz_cases <group>``: runs every case of the group in this process and
prints one JSON line per case (flushed before the call, so a crash names the case it died in).
Each case is a valid baseline call of the op with one argument replaced: a wrong dtype, rank or
shape, the meta device, None, a non-contiguous or sparse view, an empty tensor, a huge count made
with ``expand()``, or an out-of-range value. The generator is seeded: the cases are the same on
every run.

Expected outcomes:
  ("raise", names)  a ValueError/RuntimeError/TypeError/IndexError whose message contains
                    ``argument '<name>'`` for one of ``names`` (None: any argument of the op);
  ("same", names)   either that, or the baseline's result (a view with other strides);
  ("check", fn)     the call returns and ``fn(result)`` holds (a documented defined result);
  ("any", None)     a valid call: it may return, or raise naming an argument.
"""
from __future__ import annotations

import json
import math
import sys
import traceback

import torch

import domino_kernels  # noqa: F401  (loads the library and the fake kernels)

OPS = torch.ops.domino
GEN = torch.Generator().manual_seed(20260)


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN).to(dtype)


def _randint(hi, shape):
    return torch.randint(0, hi, shape, generator=GEN)


# ---- valid baseline calls: (op, argument names, argument values) ----------------------------
def base_sample():
    B, V = 3, 50
    return OPS.sample, ["logits", "temperature", "top_k", "top_p", "min_p", "seed", "offset"], [
        _randn(B, V), torch.ones(B), torch.full((B,), 5), torch.full((B,), 0.9),
        torch.full((B,), 0.05), torch.arange(B), torch.zeros(B, dtype=torch.int64)]


def base_verify():
    B, T, V = 2, 4, 30
    parents = (torch.arange(T) - 1).expand(B, T).contiguous()
    return OPS.verify, ["draft_tokens", "parents", "num_nodes", "logits", "temperature", "top_k",
                        "top_p", "draft_probs", "draft_token_probs", "seed", "offset", "rule"], [
        _randint(V, (B, T)), parents, torch.full((B,), T), _randn(B, T, V), torch.ones(B),
        torch.full((B,), 10), torch.full((B,), 0.95), torch.softmax(_randn(B, T, V), -1), None,
        torch.arange(B), torch.zeros(B, dtype=torch.int64), 2]


B_R, S_R, H_R, G_R, E_R, V_R = 2, 5, 8, 4, 6, 40


def _head():
    return [_randn(3 * G_R, H_R), _randn(3 * G_R, G_R), _randn(E_R, H_R + G_R), _randn(V_R, E_R),
            _randn(V_R, H_R)]


HEAD_NAMES = ["hidden", "base_logits", "anchor", "w_ih", "w_hh", "w1", "w2", "embedding",
              "gru_table"]


def base_rollout():
    names = HEAD_NAMES + ["num_proposals", "shift_label", "pure_prefix_len", "temperature",
                          "seed", "offset", "return_q_rows", "candidates", "w2_packed"]
    args = [_randn(B_R, S_R, H_R), _randn(B_R, S_R, V_R), _randint(V_R, (B_R,)), *_head(), None,
            4, True, 1, torch.full((B_R,), 0.8), torch.arange(B_R),
            torch.zeros(B_R, dtype=torch.int64), True, 0, None]
    return OPS.domino_rollout, names, args


def base_tree_rollout():
    names = HEAD_NAMES + ["shift_label", "pure_prefix_len", "topk", "depth", "budget",
                          "temperature", "seed", "offset", "w2_packed"]
    args = [_randn(B_R, S_R, H_R), _randn(B_R, S_R, V_R), _randint(V_R, (B_R,)), *_head(), None,
            True, 1, 2, 3, 6, torch.full((B_R,), 0.8), torch.arange(B_R),
            torch.zeros(B_R, dtype=torch.int64), None]
    return OPS.domino_tree_rollout, names, args


def base_gru_table():
    return OPS.build_gru_table, ["embedding", "w_ih"], [_randn(V_R, H_R), _randn(3 * G_R, H_R)]


def base_pack_w2():
    return OPS.pack_w2, ["w2"], [_randn(V_R, E_R, dtype=torch.bfloat16)]


def _cache():
    pages, page, hkv, d = 6, 4, 2, 16
    return (_randn(pages, page, hkv, d), _randn(pages, page, hkv, d),
            torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32),
            torch.tensor([3, 2], dtype=torch.int32), torch.tensor([0, 2, 5], dtype=torch.int32))


def base_attention():
    kc, vc, bt, kv, cu = _cache()
    return OPS.tree_attention, ["q", "k_cache", "v_cache", "block_table", "kv_lens", "q_cu_lens",
                                "tree_mask", "mask_mode", "scale", "return_lse"], [
        _randn(5, 4, 16), kc, vc, bt, kv, cu, None, 0, 0.25, True]


def base_attention_tree():
    op, names, args = base_attention()
    args[6] = torch.tensor([[1], [3], [1], [3], [5]], dtype=torch.int32)
    args[7] = 1
    return op, names, args


def base_append_kv():
    kc, vc, bt, kv, cu = _cache()
    return OPS.append_kv, ["k", "v", "k_cache", "v_cache", "block_table", "kv_lens",
                           "q_cu_lens"], [_randn(5, 2, 16), _randn(5, 2, 16), kc, vc, bt, kv, cu]


def base_tree_info():
    return OPS.tree_info, ["parents", "num_nodes", "prefix_lens"], [
        torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, -1, -1]]), torch.tensor([5, 3]),
        torch.tensor([10, 0])]


BASES = {"sample": base_sample, "verify": base_verify, "domino_rollout": base_rollout,
         "domino_tree_rollout": base_tree_rollout, "build_gru_table": base_gru_table,
         "pack_w2": base_pack_w2, "tree_attention": base_attention,
         "tree_attention_tree": base_attention_tree, "append_kv": base_append_kv,
         "tree_info": base_tree_info}

# Arguments the op takes as Tensor? (None is a valid value for them).
OPTIONAL = {"top_k", "top_p", "min_p", "draft_probs", "draft_token_probs", "gru_table",
            "w2_packed", "tree_mask", "temperature@rollout", "seed@rollout", "offset@rollout"}


def _optional(group, name):
    rollout = group in ("domino_rollout", "domino_tree_rollout")
    return name in OPTIONAL or (rollout and f"{name}@rollout" in OPTIONAL)


# ---- generic tensor mutations ----------------------------------------------------------------
def _other_dtype(t):
    if t.dtype.is_floating_point:
        return t.to(torch.float64) if t.dtype != torch.float64 else t.to(torch.float32)
    if t.dtype == torch.int64:
        return t.to(torch.int32)
    return t.to(torch.int64)


def _non_contiguous(t):
    if t.dim() == 0 or t.numel() == 0:
        return None
    return torch.stack([t, t], dim=-1)[..., 0]  # same values, last-dim stride 2


def _grow(t):
    return torch.cat([t, t[:1]], 0) if t.dim() > 0 and t.shape[0] > 0 else None


def _empty(t):
    return t[:0] if t.dim() > 0 else None


# Ops whose dim-0 sizes are free (no other argument fixes them): a grown tensor is a valid call.
FREE_DIM0 = {("build_gru_table", "embedding"), ("pack_w2", "w2")}


def tensor_mutations(group, names, args):
    first = next(n for n, a in zip(names, args) if isinstance(a, torch.Tensor))
    single = sum(isinstance(a, torch.Tensor) for a in args) == 1
    for i, (name, t) in enumerate(zip(names, args)):
        if not isinstance(t, torch.Tensor):
            continue
        meta_names = None if name == first else [name, first]
        yield f"{name}: dtype {_other_dtype(t).dtype}", i, _other_dtype(t), ("raise", [name])
        yield f"{name}: one more dimension", i, t.unsqueeze(0), ("raise", [name])
        if t.dim() > 1:
            yield f"{name}: one dimension less", i, t.reshape(-1), ("raise", [name])
        if _grow(t) is not None:
            grown = ("any", None) if (group, name) in FREE_DIM0 else ("raise", None)
            yield f"{name}: size + 1 in dim 0", i, _grow(t), grown
        if _empty(t) is not None:
            yield f"{name}: empty dim 0", i, _empty(t), ("raise", None)
        # every tensor on meta is a valid call (shapes only); a mix must raise
        yield f"{name}: on meta", i, t.to("meta"), ("any", None) if single else ("raise", meta_names)
        if not _optional(group, name):
            yield f"{name}: None", i, None, ("raise", [name])
        if _non_contiguous(t) is not None:
            yield f"{name}: non-contiguous", i, _non_contiguous(t), ("same", [name])
        if t.dim() >= 1:
            yield f"{name}: sparse", i, t.to_sparse(), ("raise", [name])


# ---- op-specific values: (description, {arg: value}, expected) ---------------------------------
def _all_nan(result):
    out, lse = result
    return bool(out.isnan().all()) and bool(lse.isnan().all())


def _ids_in_range(hi):
    def check(result):
        tokens = result[0]
        return bool(((tokens >= -1) & (tokens < hi)).all())
    return check


def value_cases(group, names, args):
    I32, I64 = torch.int32, torch.int64
    big = 2**32 - 1
    if group == "sample":
        yield "temperature -1", {"temperature": torch.tensor([1.0, -1.0, 1.0])}, ("raise", ["temperature"])
        yield "temperature nan", {"temperature": torch.tensor([1.0, math.nan, 1.0])}, ("raise", ["temperature"])
        yield "temperature 1e-45", {"temperature": torch.tensor([1.0, 1e-45, 1.0])}, ("raise", ["temperature"])
        yield "top_k -1", {"top_k": torch.tensor([5, -1, 5])}, ("raise", ["top_k"])
        yield "top_p 0", {"top_p": torch.tensor([0.9, 0.0, 0.9])}, ("raise", ["top_p"])
        yield "top_p nan", {"top_p": torch.tensor([0.9, math.nan, 0.9])}, ("raise", ["top_p"])
        yield "min_p 2", {"min_p": torch.tensor([0.0, 2.0, 0.0])}, ("raise", ["min_p"])
        lg = args[0].clone(); lg[1, 7] = math.nan
        yield "logits NaN", {"logits": lg}, ("raise", ["logits"])
        lg = args[0].clone(); lg[2, 3] = math.inf
        yield "logits +inf", {"logits": lg}, ("raise", ["logits"])
        lg = args[0].clone(); lg[0] = -math.inf
        yield "logits all -inf", {"logits": lg}, ("raise", ["logits"])
        yield "vocab 2^23 + 1 (expand)", {"logits": torch.zeros(1, 1).expand(3, 2**23 + 1)}, ("raise", ["logits"])
        yield "vocab stride 0", {"logits": torch.zeros(3, 1).expand(3, 50)}, ("raise", ["logits"])
    elif group == "verify":
        B, T = args[0].shape
        yield "rule 4", {"rule": 4}, ("raise", ["rule"])
        yield "rule -1", {"rule": -1}, ("raise", ["rule"])
        yield "num_nodes 0", {"num_nodes": torch.tensor([4, 0])}, ("raise", ["num_nodes"])
        yield "num_nodes T+1", {"num_nodes": torch.tensor([T + 1, 4])}, ("raise", ["num_nodes"])
        yield "num_nodes INT64_MAX", {"num_nodes": torch.tensor([2**63 - 1, 4])}, ("raise", ["num_nodes"])
        p = args[1].clone(); p[0, 2] = 2
        yield "parent not before child", {"parents": p}, ("raise", ["parents"])
        p = args[1].clone(); p[1, 3] = -2
        yield "parent -2", {"parents": p}, ("raise", ["parents"])
        t = args[0].clone(); t[0, 1] = -5
        yield "draft token -5", {"draft_tokens": t}, ("raise", ["draft_tokens"])
        t = args[0].clone(); t[1, 2] = 2**40
        yield "draft token 2^40", {"draft_tokens": t}, ("raise", ["draft_tokens"])
        yield "nodes 2^20 (expand)", {"draft_tokens": torch.zeros(1, 1, dtype=I64).expand(B, 2**20)}, ("raise", ["draft_tokens"])
        lg = args[3].clone(); lg[0, 0, 5] = math.nan
        yield "logits NaN at the root", {"logits": lg}, ("raise", ["logits"])
        yield "temperature nan", {"temperature": torch.tensor([1.0, math.nan])}, ("raise", ["temperature"])
        yield "top_k -3", {"top_k": torch.tensor([-3, 1])}, ("raise", ["top_k"])
        yield "top_p 1.5", {"top_p": torch.tensor([1.0, 1.5])}, ("raise", ["top_p"])
        yield "rejection without draft rows", {"draft_probs": None}, ("raise", ["draft_probs"])
        yield "both draft_probs and draft_token_probs", {"draft_token_probs": torch.ones(B, T)}, ("raise", ["draft_probs"])
        q = args[7].clone(); q[0, 0] = 0.0
        yield "draft_probs 0 at a drafted token", {"draft_probs": q}, ("raise", ["draft_probs"])
    elif group in ("domino_rollout", "domino_tree_rollout"):
        n_arg = "num_proposals" if group == "domino_rollout" else "depth"
        H, V = H_R, V_R
        yield f"{n_arg} 0", {n_arg: 0}, ("raise", [n_arg])
        yield f"{n_arg} -1", {n_arg: -1}, ("raise", [n_arg])
        yield f"{n_arg} S+1", {n_arg: S_R + 1}, ("raise", [n_arg])
        for n in (2**31, big, 2**32 + 1):
            huge = {"hidden": torch.zeros(1, 1, H).expand(B_R, n, H),
                    "base_logits": torch.zeros(1, 1, V).expand(B_R, n, V), n_arg: n}
            yield f"{n_arg} {n} with S = {n} (expand)", huge, ("raise", [n_arg])
        yield "anchor -1", {"anchor": torch.tensor([-1, 0])}, ("raise", ["anchor"])
        yield "anchor V", {"anchor": torch.tensor([0, V])}, ("raise", ["anchor"])
        yield "temperature -1", {"temperature": torch.tensor([-1.0, 1.0])}, ("raise", ["temperature"])
        yield "temperature without seed", {"seed": None}, ("raise", ["seed"])
        yield "pure_prefix_len -1", {"pure_prefix_len": -1}, ("raise", ["pure_prefix_len"])
        yield "w2_packed for fp32 weights", {"w2_packed": torch.zeros(3, 3, 16, dtype=I32)}, ("raise", ["w2_packed"])
        if group == "domino_rollout":
            yield "candidates -1", {"candidates": -1}, ("raise", ["candidates"])
            yield "candidates 7", {"candidates": 7}, ("check", _ids_in_range(V))
            bl = args[1].clone(); bl[0, 1, 3] = math.nan; bl[1, 2, 4] = math.inf
            yield "base_logits NaN/+inf", {"base_logits": bl}, ("check", _ids_in_range(V))
        else:
            yield "topk 0", {"topk": 0}, ("raise", ["topk"])
            yield "topk 9", {"topk": 9}, ("raise", ["topk"])
            yield "budget 0", {"budget": 0}, ("raise", ["budget"])
            yield "budget 4097", {"budget": 4097}, ("raise", ["budget"])
            yield "budget 2^32 + 1", {"budget": 2**32 + 1}, ("raise", ["budget"])
    elif group == "build_gru_table":
        yield "w_ih rows not a multiple of 3", {"w_ih": _randn(7, H_R)}, ("raise", ["w_ih"])
    elif group == "pack_w2":
        yield "fp32 w2", {"w2": _randn(V_R, E_R)}, ("raise", ["w2"])
        yield "empty w2", {"w2": torch.zeros(0, E_R, dtype=torch.bfloat16)}, ("raise", ["w2"])
    elif group in ("tree_attention", "append_kv"):
        yield "q_cu_lens [0, 2^31-1, 5]", {"q_cu_lens": torch.tensor([0, 2**31 - 1, 5], dtype=I32)}, ("raise", ["q_cu_lens"])
        yield "q_cu_lens [1, 2, 5]", {"q_cu_lens": torch.tensor([1, 2, 5], dtype=I32)}, ("raise", ["q_cu_lens"])
        yield "q_cu_lens [0, 3, 2]", {"q_cu_lens": torch.tensor([0, 3, 2], dtype=I32)}, ("raise", ["q_cu_lens"])
        yield "q_cu_lens ends past total_q", {"q_cu_lens": torch.tensor([0, 2, 6], dtype=I32)}, ("raise", ["q_cu_lens"])
        yield "kv_lens -1", {"kv_lens": torch.tensor([-1, 2], dtype=I32)}, ("raise", ["kv_lens"])
        yield "kv_lens INT32_MAX", {"kv_lens": torch.tensor([2**31 - 1, 2], dtype=I32)}, ("raise", ["kv_lens"])
        yield "kv_lens past capacity", {"kv_lens": torch.tensor([11, 2], dtype=I32)}, ("raise", ["kv_lens"])
        yield "block_table entry -1", {"block_table": torch.tensor([[0, -1, 2], [3, 4, 5]], dtype=I32)}, ("raise", ["block_table"])
        yield "block_table entry num_pages", {"block_table": torch.tensor([[0, 1, 2], [3, 6, 5]], dtype=I32)}, ("raise", ["block_table"])
        yield "0-row block_table, new tokens", {"block_table": torch.zeros(0, 3, dtype=I32),
                                                "kv_lens": torch.zeros(0, dtype=I32),
                                                "q_cu_lens": torch.tensor([0], dtype=I32)}, ("raise", ["block_table"])
        new_rows = "q" if group == "tree_attention" else "k"
        zero_q = {new_rows: args[0][:0], "q_cu_lens": torch.tensor([0, 2, 5], dtype=I32)}
        if group == "append_kv":
            zero_q["v"] = args[1][:0]
        yield "0 new tokens, q_cu_lens [0, 2, 5]", zero_q, ("raise", ["q_cu_lens"])
        if group == "tree_attention":
            yield "mask_mode 3", {"mask_mode": 3}, ("raise", ["mask_mode"])
            yield "mask_mode -1", {"mask_mode": -1}, ("raise", ["mask_mode"])
            yield "tree mode without tree_mask", {"mask_mode": 1}, ("raise", ["tree_mask"])
            yield "scale 1e39", {"scale": 1e39}, ("raise", ["scale"])
            yield "scale inf", {"scale": math.inf}, ("raise", ["scale"])
            yield "scale nan", {"scale": math.nan}, ("raise", ["scale"])
            yield "q all NaN", {"q": torch.full_like(args[0], math.nan)}, ("check", _all_nan)
            yield "q overflows with the scale", {"q": torch.full_like(args[0], 3e38), "scale": 1e30}, ("check", _all_nan)
            yield "head_dim 0", {"q": torch.zeros(5, 4, 0), "k_cache": torch.zeros(6, 4, 2, 0),
                                 "v_cache": torch.zeros(6, 4, 2, 0)}, ("raise", ["k_cache"])
            yield "Hq not a multiple of Hkv", {"q": _randn(5, 3, 16)}, ("raise", ["q"])
    elif group == "tree_attention_tree":
        yield "tree_mask too few words", {"tree_mask": torch.zeros(5, 0, dtype=I32)}, ("raise", ["tree_mask"])
    elif group == "tree_info":
        yield "prefix_lens -100", {"prefix_lens": torch.tensor([-100, 0])}, ("raise", ["prefix_lens"])
        yield "prefix_lens INT64_MAX", {"prefix_lens": torch.tensor([2**63 - 1, 0])}, ("raise", ["prefix_lens"])
        yield "num_nodes -1", {"num_nodes": torch.tensor([-1, 3])}, ("raise", ["num_nodes"])
        yield "num_nodes T+1", {"num_nodes": torch.tensor([6, 3])}, ("raise", ["num_nodes"])
        yield "T = 0 with num_nodes [5, 5]", {"parents": torch.zeros(2, 0, dtype=I64),
                                              "num_nodes": torch.tensor([5, 5])}, ("raise", ["num_nodes"])
        yield "root parent 0", {"parents": torch.tensor([[0, 0, 0, 1, 1], [-1, 0, 1, -1, -1]])}, ("raise", ["parents"])
        yield "parent after child", {"parents": torch.tensor([[-1, 0, 3, 1, 1], [-1, 0, 1, -1, -1]])}, ("raise", ["parents"])
        yield "nodes 2^31 (expand)", {"parents": torch.full((1, 1), -1).expand(2, 2**31),
                                      "num_nodes": torch.tensor([1, 1])}, ("raise", ["parents"])


# NaN / +inf base logits reach the tree rollout's top-k selection: run on their own.
def nan_tree_rollout_cases(names, args):
    V = V_R
    bl = args[1].clone(); bl[0, 0, 3] = math.nan; bl[1, 1, :] = math.nan
    yield "base_logits NaN", {"base_logits": bl}, ("check", _ids_in_range(V))
    bl = args[1].clone(); bl[0, 0, 5] = math.inf; bl[1, 2, 1] = math.inf
    yield "base_logits +inf", {"base_logits": bl}, ("check", _ids_in_range(V))
    for greedy in (True, False):
        bl = args[1].clone(); bl[:, :, ::3] = math.nan
        extra = {"temperature": None, "seed": None, "offset": None} if greedy else {}
        yield f"base_logits NaN columns ({'greedy' if greedy else 'sampled'})", {"base_logits": bl, **extra}, ("check", _ids_in_range(V))


def cases(group):
    base_group = group.removesuffix("_nan")
    op, names, args = BASES[base_group]()
    out = []
    if group.endswith("_nan"):
        for desc, change, exp in nan_tree_rollout_cases(names, args):
            out.append((desc, {names.index(k): v for k, v in change.items()}, exp))
        return op, names, args, out
    for desc, i, value, exp in tensor_mutations(base_group, names, args):
        out.append((desc, {i: value}, exp))
    for desc, change, exp in value_cases(base_group, names, args):
        out.append((desc, {names.index(k): v for k, v in change.items()}, exp))
    return op, names, args, out


def _same(a, b):
    if isinstance(a, (tuple, list)):
        return all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and (torch.equal(a, b) or torch.allclose(a, b, atol=1e-5,
                                                                        equal_nan=True))


def run_case(op, names, base, baseline, change, exp):
    args = list(base)
    for i, v in change.items():
        args[i] = v
    kind, arg = exp
    try:
        result = op(*args)
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        msg = str(e).split("\n")[0][:400]
        if kind == "check":
            return False, f"raised {type(e).__name__}: {msg}"
        wanted = names if arg is None else arg
        ok = any(f"argument '{n}'" in msg for n in wanted)
        return ok, f"raised {type(e).__name__}: {msg}" + ("" if ok else f" (wanted one of {wanted})")
    if kind == "raise":
        return False, "returned instead of raising"
    if kind == "any":
        return True, "returned"
    if kind == "same":
        return _same(result, baseline), "returned " + ("the baseline result" if _same(result, baseline) else "a different result")
    return bool(arg(result)), "returned; defined-result check " + ("held" if arg(result) else "FAILED")


def main(group):
    op, names, base, all_cases = cases(group)
    baseline = op(*base)
    for desc, change, exp in all_cases:
        print(json.dumps({"case": desc, "started": True}), flush=True)
        try:
            ok, detail = run_case(op, names, base, baseline, change, exp)
        except Exception as e:  # noqa: BLE001  (an exception type outside the contract)
            ok, detail = False, f"unexpected {type(e).__name__}: {e}\n{traceback.format_exc()}"
        print(json.dumps({"case": desc, "ok": ok, "detail": detail}), flush=True)


GROUPS = list(BASES) + ["domino_tree_rollout_nan"]

if __name__ == "__main__":
    main(sys.argv[1])
