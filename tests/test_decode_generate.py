"""generate(): lossless speculative decoding (greedy output equal to target-only greedy and to
transformers' greedy generate; chain and tree; DFlash-only and Domino; random and oracle drafts that
get many proposals accepted), stop tokens, max-new-tokens, bad input, the sequence distribution of
sampled decoding, and the CLI."""
import io
import json
import contextlib

import numpy as np
import pytest
import torch

from domino_kernels.__main__ import main as cli
from domino_kernels.generate import generate
from domino_kernels.model.dflash import load_draft
from domino_kernels.model.qwen3 import load_qwen3
from tests.decode_fixtures import make_draft, make_target, single_thread

_single_thread = single_thread()
from tests.conftest import requires_cuda
from tests.stats import assert_matches_distribution, assert_rejects_distribution

V = 97


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    # init_range 0.1: logits with clear margins, so greedy tokens do not hinge on the last bit of a
    # reduction (multi-token verify and single-token decode use different matmul shapes)
    hf = make_target(d / "t", layers=4, init_range=0.1, seed=3)
    make_draft(d / "d", 32, target_layer_ids=(0, 2))
    make_draft(d / "f", 32, head=False, shift_label=False)
    target = load_qwen3(str(d / "t"))
    return hf, target, load_draft(str(d / "d"), target), load_draft(str(d / "f"), target)


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


class Oracle:
    """Replaces a draft's proposals with the reference continuation, corrupted at random places, so
    that long accepted runs, partial acceptance and (for trees) accepted paths through
    non-contiguous nodes all occur. It stays a real draft otherwise (its backbone still runs)."""

    def __init__(self, draft, reference, seed):
        self.draft, self.reference = draft, reference
        self.rng = np.random.default_rng(seed)
        self.rows = self.pos = None
        block_forward = draft.block_forward

        def spy(anchor, embed, cache, rows):
            self.rows, self.pos = rows.tolist(), cache.lens[rows].tolist()
            return block_forward(anchor, embed, cache, rows)

        draft.block_forward = spy
        draft.propose_chain = self.chain
        draft.propose_tree = self.tree

    def _truth(self, i, n):
        ref = self.reference[self.rows[i]]
        s = self.pos[i]
        out = ref[s + 1: s + 1 + n]
        return out + [0] * (n - len(out))

    def _wrong(self, tok):
        return int((tok + 1 + self.rng.integers(V - 1)) % V)

    def chain(self, z, anchor, target, n):
        rows = []
        for i in range(len(self.rows)):
            t = self._truth(i, n)
            if self.rng.random() < 0.6:
                k = int(self.rng.integers(n))
                t[k] = self._wrong(t[k])
            rows.append(t)
        return torch.tensor(rows, dtype=torch.int64)

    def tree(self, z, anchor, target, topk, budget):
        depth = budget // 2
        toks, pars = [], []
        for i in range(len(self.rows)):
            t = self._truth(i, depth)
            bad_level = int(self.rng.integers(depth + 3))  # sometimes no bad level
            tok, par, good = [int(anchor[i])], [-1], 0
            for level in range(depth):
                right = t[level] if level != bad_level else self._wrong(t[level])
                pair = [right, self._wrong(t[level])]
                if self.rng.random() < 0.5:
                    pair.reverse()
                for x in pair:
                    tok.append(x)
                    par.append(good)
                good = len(tok) - 2 + pair.index(right)
            toks.append(tok)
            pars.append(par)
        n = torch.full((len(toks),), len(toks[0]), dtype=torch.int64)
        return torch.tensor(toks), torch.tensor(pars), n


@pytest.mark.parametrize("batch,n_prop", [(1, 16), (3, 5), (4, 1)])
def test_greedy_speculative_equals_target_only(pair, batch, n_prop):
    _, target, domino, dflash = pair
    prompts = _prompts(batch * 10 + n_prop, [3 + 5 * i for i in range(batch)])
    ref = generate(target, prompts, max_new_tokens=24)
    for draft, head in ((domino, True), (domino, False), (dflash, True)):
        n = min(n_prop, draft.max_proposals())
        out = generate(target, prompts, draft=draft, max_new_tokens=24, num_proposals=n, use_head=head)
        assert out.tokens == ref.tokens
        assert all(len(t) == 24 for t in out.tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_proposal_logits_are_the_base_logits_of_each_proposal(pair, dtype):
    """``proposal_logits`` (one 2-D GEMM) gives each proposal's hidden times the lm_head: slot
    i-1 with shift_label (the Domino draft), slot i without (the DFlash one)."""
    _, target, domino, dflash = pair
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 16, 32, generator=g).to(dtype)
    lm_head = target.lm_head.to(dtype)
    for draft, first in ((domino, 0), (dflash, 1)):
        for n in (1, 4, 15):
            got = draft.proposal_logits(z, n, lm_head)
            assert got.dtype == torch.float32 and got.shape == (3, n, V)
            for b in range(3):
                want = (z[b, first:first + n] @ lm_head.t()).float()
                tol = 1e-5 if dtype == torch.float32 else 2e-2   # GEMM shapes round differently
                torch.testing.assert_close(got[b], want, rtol=tol, atol=tol)


def test_gru_table_path_stays_lossless(tmp_path, pair):
    _, target, _, _ = pair
    draft = load_draft(str(make_draft(tmp_path, 32) and tmp_path), target)
    prompts = _prompts(31, [5, 2])
    ref = generate(target, prompts, max_new_tokens=16).tokens
    plain = generate(target, prompts, draft=draft, max_new_tokens=16, trace=True, spec_policy="fixed")
    draft.use_gru_table(target)
    assert draft.gru_table.shape == (V, 3 * 24)
    table = generate(target, prompts, draft=draft, max_new_tokens=16, trace=True, spec_policy="fixed")
    assert table.tokens == plain.tokens == ref
    assert generate(target, prompts, draft=draft, max_new_tokens=16, tree_topk=2, tree_budget=6, tree_as_chain=False).tokens == ref
    assert [r["draft"] for r in table.trace] == [r["draft"] for r in plain.trace]  # fp32: same drafts


def test_greedy_tree_equals_target_only(pair):
    _, target, domino, dflash = pair
    prompts = _prompts(7, [4, 9, 2])
    ref = generate(target, prompts, max_new_tokens=20)
    for draft in (domino, dflash):
        out = generate(target, prompts, draft=draft, max_new_tokens=20, tree_topk=2, tree_budget=6, tree_as_chain=False)
        assert out.tokens == ref.tokens and out.stats["mode"].startswith("tree")


@pytest.mark.parametrize("budget", [5, 16])
def test_tree_within_the_block_is_drafted_as_its_chain(pair, budget):
    """By the spine rule a tree whose budget fits the block's depth is the chain of `budget`
    proposals: drafted as that chain it gives the chain's steps and tokens, and the tree kernels
    give the very same drafts (a greedy tree = its spine here), so the same output and tau."""
    _, target, domino, _ = pair
    prompts = _prompts(11, [5, 8])
    chain = generate(target, prompts, draft=domino, max_new_tokens=24, num_proposals=budget, spec_policy="fixed")
    fast = generate(target, prompts, draft=domino, max_new_tokens=24, tree_topk=3, tree_budget=budget,
                    spec_policy="fixed")
    slow = generate(target, prompts, draft=domino, max_new_tokens=24, tree_topk=3, tree_budget=budget,
                    spec_policy="fixed", tree_as_chain=False)
    assert fast.stats["tree_as_chain"] and fast.stats["mode"].startswith("chain")
    assert not slow.stats["tree_as_chain"] and slow.stats["mode"].startswith("tree")
    assert fast.tokens == chain.tokens == slow.tokens == generate(target, prompts, max_new_tokens=24).tokens
    assert fast.stats["accept_hist"] == chain.stats["accept_hist"]
    assert slow.stats["tau"] == chain.stats["tau"]


@pytest.mark.parametrize("topk,budget", [(1, 8), (2, 16), (3, 30), (4, 64)])
def test_greedy_dynamic_tree_equals_target_only_ragged(pair, monkeypatch, topk, budget):
    """Dynamic trees of every fan-out and budget (B = 4, ragged prompts) decode exactly the
    target's greedy output; so do ragged trees (alternate requests cut to a prefix of their layout,
    which is still a tree) in one batch."""
    _, target, domino, dflash = pair
    prompts = _prompts(40 + topk, [3, 11, 1, 7])
    ref = generate(target, prompts, max_new_tokens=24).tokens
    for draft in (domino, dflash):
        out = generate(target, prompts, draft=draft, max_new_tokens=24, tree_topk=topk, tree_budget=budget, tree_as_chain=False)
        assert out.tokens == ref
    original = domino.propose_tree

    def ragged(z, anchor, target, k, b):
        tokens, parents, num = original(z, anchor, target, k, b)
        cut = num.clone()
        cut[1::2] = torch.clamp(num[1::2] // 2, min=1)
        pad = torch.arange(tokens.shape[1]) >= cut[:, None]
        return tokens.masked_fill(pad, -1), parents.masked_fill(pad, -1), cut

    monkeypatch.setattr(domino, "propose_tree", ragged)
    out = generate(target, prompts, draft=domino, max_new_tokens=24, tree_topk=topk, tree_budget=budget, tree_as_chain=False)
    assert out.tokens == ref


def test_greedy_matches_transformers_generate(pair):
    hf, target, domino, _ = pair
    prompts = _prompts(11, [6, 13])
    out = generate(target, prompts, draft=domino, max_new_tokens=20)
    for p, toks in zip(prompts, out.tokens):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, min_new_tokens=20)
        assert ref[0, len(p):].tolist() == toks


@pytest.mark.parametrize("tree", [False, True])
def test_oracle_draft_high_acceptance_stays_lossless(tmp_path, pair, tree):
    _, target, _, _ = pair
    draft = load_draft(str(make_draft(tmp_path, 32) and tmp_path), target)
    prompts = _prompts(5 + tree, [2, 7, 12, 5])
    ref = generate(target, prompts, max_new_tokens=60)
    full = [p + r for p, r in zip(prompts, ref.tokens)]
    Oracle(draft, full, seed=3)
    kw = dict(tree_topk=2, tree_budget=16, tree_as_chain=False) if tree else dict(num_proposals=8)
    out = generate(target, prompts, draft=draft, max_new_tokens=40, trace=True, **kw)
    assert out.tokens == [r[:40] for r in ref.tokens]
    hist = out.stats["accept_hist"]
    assert out.stats["tau"] > 2.5 and sum(c > 0 for c in hist) >= 4   # many acceptance lengths seen
    assert all(len(r["draft"]) == len(r["accepted"]) == len(r["requests"]) for r in out.trace)


def test_stop_tokens_and_max_new_tokens(tmp_path, pair):
    _, target, _, _ = pair
    prompts = _prompts(21, [5, 8])
    ref = generate(target, prompts, max_new_tokens=40)
    stop = ref.tokens[0][10]
    first = [t.index(stop) if stop in t else None for t in ref.tokens]
    draft = load_draft(str(make_draft(tmp_path, 32) and tmp_path), target)
    Oracle(draft, [p + r for p, r in zip(prompts, ref.tokens)], seed=1)
    for d in (None, draft):
        out = generate(target, prompts, draft=d, max_new_tokens=40, stop_ids=[stop])
        for toks, r, f in zip(out.tokens, ref.tokens, first):
            assert toks == (r[: f + 1] if f is not None else r)
        out = generate(target, prompts, draft=d, max_new_tokens=40, stop_ids=[stop], ignore_eos=True)
        assert out.tokens == ref.tokens
        for n in (1, 3, 17):  # never more than asked, even when a step accepts many tokens
            assert generate(target, prompts, draft=d, max_new_tokens=n).tokens == [r[:n] for r in ref.tokens]


def test_bad_input(pair):
    _, target, domino, _ = pair
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(target, [[1, 2], []], draft=domino)
    with pytest.raises(ValueError, match=r"token ids \[97\] outside the vocabulary"):
        generate(target, [[1, 97]])
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        generate(target, [[1] * 500], max_new_tokens=20)
    with pytest.raises(ValueError, match="'max_new_tokens' must be a non-negative int"):
        generate(target, [[1]], max_new_tokens=-1)
    with pytest.raises(ValueError, match="'num_proposals' must be in"):
        generate(target, [[1]], draft=domino, num_proposals=17)
    with pytest.raises(ValueError, match="'prompts' is empty"):
        generate(target, [])
    with pytest.raises(ValueError, match="needs both 'tree_topk' and 'tree_budget'"):
        generate(target, [[1]], draft=domino, tree_topk=2)
    with pytest.raises(ValueError, match="'temperature' must be a finite number >= 0"):
        generate(target, [[1]], temperature=-1.0)
    with pytest.raises(ValueError, match="'temperature' must be a finite number >= 0"):
        generate(target, [[1]], temperature=float("nan"))
    with pytest.raises(ValueError, match="'top_p' must be in"):
        generate(target, [[1]], temperature=1.0, top_p=0.0)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="'draft_temperature' must be a finite number >= 0"):
            generate(target, [[1]], draft=domino, temperature=1.0, draft_temperature=bad)
    with pytest.raises(ValueError, match="'spec_policy' must be one of \\['adaptive', 'fixed'\\]"):
        generate(target, [[1]], draft=domino, spec_policy="greedy")
    with pytest.raises(ValueError, match="'compare_rule' must be one of"):
        generate(target, [[1]], draft=domino, compare_rule="nope")
    out = generate(target, [[1, 2, 3]], draft=domino, max_new_tokens=0)
    assert out.tokens == [[]] and out.stats["new_tokens"] == 0


@pytest.mark.parametrize("tree", [False, True])
def test_sampled_speculative_decoding_has_the_target_sequence_distribution(tmp_path, tree):
    """Three sampled tokens (T=0.8, top-k 4) from a 6-token vocabulary, 1e5 sequences through the
    batch dimension, against the exact sequence probabilities of the transformers model; greedy
    chain drafts (draft temperature 0) and deterministic trees, both verified by the target-only
    rule (sampled chains: tests/test_decode_sampled.py). False-alarm rate of the G-test:
    alpha = 1e-4 per case at these fixed seeds."""
    vocab = 6
    hf = make_target(tmp_path / "t", vocab=vocab, hidden=16, layers=2, heads=2, kv_heads=1, inter=32,
                     init_range=0.5, seed=4)
    target = load_qwen3(str(tmp_path / "t"))
    make_draft(tmp_path / "d", 16, vocab=vocab, mask_token_id=5, heads=2, kv_heads=1, inter=32,
               target_layer_ids=(0, 1), emb_dim=8, gru=8)
    draft = load_draft(str(tmp_path / "d"), target)
    prompt = [1, 4, 2]

    def probs(prefixes):
        with torch.no_grad():
            logits = hf(torch.tensor(prefixes)).logits[:, -1].double() / 0.8
        kth = logits.topk(4, dim=-1).values[:, -1:]
        return torch.softmax(logits.masked_fill(logits < kth, float("-inf")), -1).numpy()

    p1 = probs([prompt])[0]
    p2 = probs([prompt + [a] for a in range(vocab)])
    p3 = probs([prompt + [a, b] for a in range(vocab) for b in range(vocab)]).reshape(vocab, vocab, vocab)
    exact = p1[:, None, None] * p2[:, :, None] * p3
    # the draft proposes the most likely continuation of the anchor (a deterministic function of the
    # context, as any draft is): proposals get accepted often, so the verify path decides most tokens
    y1 = p2.argmax(-1)
    table = torch.tensor(np.stack([y1, p3[np.arange(vocab), y1].argmax(-1), np.zeros(vocab, int)], 1))
    draft.propose_chain = lambda z, anchor, target, n: table[anchor][:, :n]
    # tree: root -> {y1, second choice}, y1 -> {y2}
    alt = torch.tensor(np.argsort(-p2, axis=-1)[:, 1])

    def propose_tree(z, anchor, target, topk, budget):
        toks = torch.stack([anchor, table[anchor, 0], alt[anchor], table[anchor, 1]], 1)
        parents = torch.tensor([-1, 0, 0, 1]).expand(len(anchor), 4)
        return toks, parents, torch.full((len(anchor),), 4)

    draft.propose_tree = propose_tree
    kw = dict(tree_topk=2, tree_budget=3, tree_as_chain=False) if tree else dict(num_proposals=3)
    counts = np.zeros(vocab ** 3)
    taus = []
    for chunk in range(4):
        out = generate(target, [prompt] * 25000, draft=draft, max_new_tokens=3, temperature=0.8, top_k=4,
                       seed=100 + chunk + 10 * tree, draft_temperature=0.0, spec_policy="fixed", **kw)
        assert out.stats["rule"] == "target_only"
        seq = np.array(out.tokens)
        np.add.at(counts, seq[:, 0] * vocab ** 2 + seq[:, 1] * vocab + seq[:, 2], 1)
        taus.append(out.stats["tau"])
    assert min(taus) > 1.5  # the draft's proposals were accepted often enough to matter
    assert_matches_distribution(counts, exact.ravel())
    # power: the same counts reject the sequence distribution of a slightly different temperature
    with torch.no_grad():
        l1 = hf(torch.tensor([prompt])).logits[0, -1].double() / 0.9
    p1_wrong = torch.softmax(l1.masked_fill(l1 < l1.topk(4).values[-1], float("-inf")), -1).numpy()
    assert_rejects_distribution(counts, (p1_wrong[:, None, None] * p2[:, :, None] * p3).ravel())


def test_sampling_is_reproducible_from_the_seed(pair):
    """The fixed policy (and an adaptive one with frozen costs) is a function of the seed; the
    default adaptive policy's choices also depend on measured timings."""
    from domino_kernels.spec_policy import AdaptivePolicy, StepCosts

    _, target, domino, _ = pair
    prompts = _prompts(2, [4, 6])
    for policy in ("fixed", lambda: AdaptivePolicy(StepCosts(1.0, 0.5, 0.01, frozen=True))):
        kw = dict(draft=domino, max_new_tokens=12, temperature=1.0, top_p=0.9)
        make = (lambda: policy) if isinstance(policy, str) else policy
        a = generate(target, prompts, seed=7, spec_policy=make(), **kw)
        b = generate(target, prompts, seed=7, spec_policy=make(), **kw)
        c = generate(target, prompts, seed=8, spec_policy=make(), **kw)
        assert a.tokens == b.tokens and a.tokens != c.tokens


def test_cli_json_and_trace(tmp_path):
    make_target(tmp_path / "t", layers=4, init_range=0.1, seed=3, max_pos=512)
    make_draft(tmp_path / "d", 32)
    base = ["generate", "--target", str(tmp_path / "t"), "--prompt-ids", "5,6,7", "--max-new-tokens", "9",
            "--ignore-eos", "--json"]
    runs = {}
    for name, extra in {"plain": ["--no-draft"], "chain": ["--draft", str(tmp_path / "d"), "--trace", "--spec-policy", "fixed"],
                        "tree": ["--draft", str(tmp_path / "d"), "--tree-topk", "2", "--tree-budget", "5"]}.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli(base + extra) == 0
        runs[name] = json.loads(buf.getvalue())
    assert runs["plain"]["tokens"] == runs["chain"]["tokens"] == runs["tree"]["tokens"]
    assert len(runs["chain"]["tokens"]) == 9
    st = runs["chain"]["stats"]
    assert st["tau"] >= 1 and st["tokens_per_s"] > 0
    trace = runs["chain"]["trace"]
    assert len(trace) == st["steps"] and all(len(r["draft"]) == 16 and 0 <= r["accepted"] <= 16 for r in trace)
    with pytest.raises(SystemExit, match="--draft DIR, or --no-draft"):
        cli(base[:-1])


def test_cli_text_prompt_with_tokenizer_and_summary_line(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    make_target(tmp_path / "t", layers=4, init_range=0.1, seed=3)
    make_draft(tmp_path / "d", 32)
    words = [f"w{i}" for i in range(V)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "t" / "tokenizer.json"))
    args = ["generate", "--target", str(tmp_path / "t"), "--draft", str(tmp_path / "d"), "--prompt", "w5 w6 w7",
            "--max-new-tokens", "6", "--ignore-eos"]
    assert cli(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"].split() == [words[t] for t in out["tokens"]]
    ids = generate(load_qwen3(str(tmp_path / "t")), [[5, 6, 7]], max_new_tokens=6).tokens[0]
    assert out["tokens"] == ids
    assert cli(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == [words[t] for t in ids]
    assert lines[-1].startswith("[chain domino; verified by greedy; adaptive policy] 6 tokens in") and "tokens/s, tau" in lines[-1]


@pytest.mark.parametrize("case", range(6))
def test_random_configurations_stay_lossless(tmp_path, pair, case):
    """A sweep: batch 1-5, prompt lengths 1-20, chain length or tree shape, Domino or DFlash,
    the real draft or an oracle draft (long accepted runs)."""
    _, target, domino, dflash = pair
    rng = np.random.default_rng(case)
    prompts = _prompts(100 + case, rng.integers(1, 21, size=int(rng.integers(1, 6))).tolist())
    max_new = int(rng.integers(5, 30))
    ref = generate(target, prompts, max_new_tokens=max_new + 20)
    draft = domino if case % 2 else dflash
    if case % 3 == 0:
        draft = load_draft(str(make_draft(tmp_path, 32) and tmp_path), target)
        Oracle(draft, [p + r for p, r in zip(prompts, ref.tokens)], seed=case)
    kw = (dict(tree_topk=int(rng.integers(1, 4)), tree_budget=int(rng.integers(2, 24)), tree_as_chain=False) if case >= 3
          else dict(num_proposals=int(rng.integers(1, draft.max_proposals() + 1))))
    out = generate(target, prompts, draft=draft, max_new_tokens=max_new, **kw)
    assert out.tokens == [r[:max_new] for r in ref.tokens]


@requires_cuda
def test_cuda_decoding_is_lossless_and_matches_cpu(tmp_path, pair):
    """On a GPU: speculative greedy (chain and tree) equals target-only greedy on the GPU, and the
    tokens equal the CPU run (fp32 tiny model with clear margins)."""
    from domino_kernels.model.qwen3 import load_qwen3 as load

    d = tmp_path / "t"
    make_target(d, layers=4, init_range=0.1, seed=3)
    make_draft(tmp_path / "d", 32)
    cpu_target = load(str(d))
    gpu_target = load(str(d), device="cuda")
    gpu_draft = load_draft(str(tmp_path / "d"), gpu_target)
    prompts = _prompts(9, [3, 11, 6])
    ref_cpu = generate(cpu_target, prompts, max_new_tokens=24).tokens
    ref = generate(gpu_target, prompts, max_new_tokens=24).tokens
    assert ref == ref_cpu
    assert generate(gpu_target, prompts, draft=gpu_draft, max_new_tokens=24).tokens == ref
    assert generate(gpu_target, prompts, draft=gpu_draft, max_new_tokens=24, tree_topk=2,
                    tree_budget=8, tree_as_chain=False).tokens == ref
    for policy in ("fixed", "adaptive"):   # greedy: every policy
        assert generate(gpu_target, prompts, draft=gpu_draft, max_new_tokens=24, spec_policy=policy).tokens == ref
    # sampled chains (rollout q rows + rejection) on the device: reproducible under the fixed policy
    s1 = generate(gpu_target, prompts, draft=gpu_draft, max_new_tokens=16, temperature=1.0, seed=5,
                  spec_policy="fixed")
    s2 = generate(gpu_target, prompts, draft=gpu_draft, max_new_tokens=16, temperature=1.0, seed=5,
                  spec_policy="fixed")
    assert s1.tokens == s2.tokens and s1.stats["rule"] == "rejection"
