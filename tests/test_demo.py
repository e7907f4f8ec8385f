"""The demo: GenerateResult.spans partition each output and agree with the stats and the trace;
the span texts, the marking (colour / ⟦…⟧ / escaped control characters) and the colour choice;
the `demo` command's text and --json output (the embedded pair, few tokens)."""
import contextlib
import io
import json

import pytest
import torch

from domino_kernels.__main__ import main as cli
from domino_kernels.assets import default_draft_dir, default_target_dir
from domino_kernels.generate import StepSpan, generate
from domino_kernels.model.dflash import load_draft
from domino_kernels.model.qwen3 import load_qwen3
from domino_kernels.show import CLOSE, GREEN, OPEN, RESET, render, span_texts, split_spans, use_color
from domino_kernels.tokenizer import load_tokenizer
from tests.decode_fixtures import single_thread

_single_thread = single_thread()
ESC = "\x1b"


@pytest.fixture(scope="module")
def pair():
    target = load_qwen3(default_target_dir())
    return target, load_draft(default_draft_dir("domino"), target), load_tokenizer(default_target_dir())


def _prompts(tok):
    return [tok.encode("def read_config(path):"), tok.encode("import os\n\nclass Cache:")]


def _check_spans(res, drafted: bool):
    """Every span is well formed, the spans partition each output, and tau / accept_hist follow
    from the drafted spans."""
    drafted_spans = []
    for tokens, spans in zip(res.tokens, res.spans):
        assert spans[0] == StepSpan(0, 0, 1)                       # the prefill's token
        assert sum(s.emitted for s in spans) == len(tokens)
        parts = split_spans(tokens, spans)
        assert [t for a, b in parts for t in (*a, *b)] == tokens
        for s in spans:
            assert 1 <= s.emitted <= s.accepted + 1 and 0 <= s.accepted <= s.depth
            assert s.depth > 0 or s.accepted == 0
        assert all(s.emitted == s.accepted + 1 for s in spans[:-1])  # only the last step is cut
        drafted_spans += [s for s in spans if s.depth > 0]
    if not drafted:
        assert not drafted_spans
        return
    assert drafted_spans
    assert sum(s.accepted + 1 for s in drafted_spans) / len(drafted_spans) == pytest.approx(res.stats["tau"])
    hist = [0] * len(res.stats["accept_hist"])
    for s in drafted_spans:
        hist[s.accepted] += 1
    assert hist == res.stats["accept_hist"]


@pytest.mark.parametrize("kw", [dict(spec_policy="fixed"), dict(spec_policy="adaptive"),
                                dict(tree_topk=2, tree_budget=6, tree_as_chain=False, spec_policy="fixed"),
                                dict(temperature=1.0, seed=3, spec_policy="fixed")],
                         ids=["chain-fixed", "chain-adaptive", "tree", "sampled"])
def test_spans_partition_output_and_match_tau(pair, kw):
    target, draft, tok = pair
    res = generate(target, _prompts(tok), draft=draft, max_new_tokens=21, ignore_eos=True, **kw)
    assert [len(t) for t in res.tokens] == [21, 21]
    _check_spans(res, drafted=True)
    if not kw.get("temperature"):   # greedy: the spans cut the target-only output
        assert res.tokens == generate(target, _prompts(tok), max_new_tokens=21).tokens


def test_accepted_span_tokens_are_the_drafted_tokens(pair):
    """Batch 1, chain, the trace on: each step's accepted ids are the first tokens of its draft."""
    target, draft, tok = pair
    res = generate(target, _prompts(tok)[:1], draft=draft, max_new_tokens=30, ignore_eos=True,
                   spec_policy="fixed", trace=True)
    assert len(res.spans[0]) == res.stats["steps"] + 1 == len(res.trace) + 1
    parts = split_spans(res.tokens[0], res.spans[0])
    assert any(a for a, _ in parts), "the trained pair should get some draft accepted"
    for (a, b), span, rec in zip(parts[1:], res.spans[0][1:], res.trace):
        assert span.accepted == rec["accepted"][0] and a == rec["draft"][0][:len(a)]


def test_spans_stop_token_and_target_only(pair):
    target, draft, tok = pair
    prompts = _prompts(tok)
    ref = generate(target, prompts, max_new_tokens=24)
    _check_spans(ref, drafted=False)
    assert all(s == StepSpan(0, 0, 1) for spans in ref.spans for s in spans)
    stop = ref.tokens[0][9]   # request 0 stops early, inside some step
    res = generate(target, prompts, draft=draft, max_new_tokens=24, stop_ids=[stop], spec_policy="fixed")
    assert res.tokens[0] == ref.tokens[0][:ref.tokens[0].index(stop) + 1]
    _check_spans(res, drafted=True)
    assert generate(target, prompts, draft=draft, max_new_tokens=0).spans == [[], []]


def test_span_texts_concatenate_and_keep_split_characters_whole():
    """Byte tokens decoded as UTF-8: a character cut between two steps goes to the later piece."""
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    data = list("ab€c".encode()) + list("é!".encode())          # € = 3 bytes, é = 2
    spans = [StepSpan(0, 0, 1), StepSpan(4, 2, 3), StepSpan(3, 2, 3), StepSpan(2, 1, 2)]
    parts = split_spans(data, spans)
    assert parts[1] == ([ord("b"), data[2]], [data[3]])             # the € bytes span steps 1 and 2
    texts = span_texts(decode, parts)
    assert "".join(a + b for a, b in texts) == decode(data) == "ab€cé!"
    assert texts == [("", "a"), ("b", ""), ("€c", ""), ("é", "!")]
    with pytest.raises(ValueError, match="'spans' covers 9 tokens but 'tokens' has 10"):
        split_spans(data + [33], spans)


def test_span_texts_with_the_bpe_tokenizer(pair):
    target, draft, tok = pair
    res = generate(target, _prompts(tok)[:1], draft=draft, max_new_tokens=40, ignore_eos=True, spec_policy="fixed")
    texts = span_texts(tok.decode, split_spans(res.tokens[0], res.spans[0]))
    assert "".join(a + b for a, b in texts) == tok.decode(res.tokens[0])


def test_render_marks_accepted_drafts():
    pieces = [("", "x = "), ("[1, ", "2"), ("", "]"), ("\x1b[2J", "\n")]
    color = render(pieces, color=True)
    assert color == f"x = {GREEN}[1, {RESET}2]{GREEN}\\x1b[2J{RESET}\n"
    plain = render(pieces, color=False)
    assert plain == f"x = {OPEN}[1, {CLOSE}2]{OPEN}\\x1b[2J{CLOSE}\n" and ESC not in plain


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_use_color():
    assert use_color("always", _Stream(False), {}) and not use_color("never", _Stream(True), {})
    assert use_color("auto", _Stream(True), {"TERM": "xterm"})
    assert not use_color("auto", _Stream(False), {})
    assert not use_color("auto", _Stream(True), {"NO_COLOR": "1"})
    assert use_color("auto", _Stream(True), {"NO_COLOR": ""})
    assert not use_color("auto", _Stream(True), {"TERM": "dumb"})
    assert not use_color("auto", io.StringIO(), {})
    with pytest.raises(ValueError, match="'choice'"):
        use_color("yes", _Stream(True), {})


def _demo(*extra):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(["demo", "--max-new-tokens", "24", "--spec-policy", "fixed", "--prompt", "def read_config(path):",
                  *extra])
    return rc, buf.getvalue()


def test_demo_json_and_text_forms():
    rc, out = _demo("--json")
    assert rc == 0
    report = json.loads(out)   # one object and nothing else
    for key in ("prompt", "prompt_ids", "continuation", "continuation_ids", "spans", "target_only_tokens_per_s",
                "speculative_tokens_per_s", "speedup", "tau", "rule", "spec_policy", "mode", "stats"):
        assert key in report, key
    assert report["equal_to_target_only"] is True and report["rule"] == "greedy"
    assert report["spec_policy"] == "fixed" and report["prompt"] == "def read_config(path):"
    spans = report["spans"]
    assert [t for s in spans for t in s["accepted_ids"] + s["target_ids"]] == report["continuation_ids"]
    assert "".join(s["accepted_text"] + s["target_text"] for s in spans) == report["continuation"]
    assert all(s["depth"] > 0 or not s["accepted_ids"] for s in spans)
    assert all(len(s["target_ids"]) == 1 for s in spans[:-1])
    marked = [s for s in spans if s["accepted_ids"]]
    assert marked

    for flags in ([], ["--no-color"]):       # redirected stdout (not a terminal) and --no-color
        rc, out = _demo(*flags)
        assert rc == 0 and ESC not in out
        lines = out.splitlines()
        assert lines[1] == "prompt (7 tokens):" and lines[2] == report["prompt"]
        assert "speculative output == target-only greedy output: True" in lines[-1]
        assert lines[-3].startswith("[target-only] 24 tokens")
        assert lines[-2].startswith("[chain domino; verified by greedy; fixed policy] 24 tokens")
        text = out.split("the target's own tokens (one per step)):\n", 1)[1].rsplit("\n[target-only]", 1)[0]
        assert text.count(OPEN) == text.count(CLOSE) == len(marked)
        assert text.replace(OPEN, "").replace(CLOSE, "") == report["continuation"]
    rc, out = _demo("--color", "always")   # what a terminal gets
    assert rc == 0 and out.count(GREEN) == out.count(RESET) == len(marked) and OPEN not in out


def test_demo_without_the_embedded_pair_prints_ids(tmp_path, monkeypatch):
    """A build without the trained pair: the random synthetic pair, no tokenizer, ids as text."""
    import domino_kernels.__main__ as cli_module

    monkeypatch.setattr(cli_module, "_embedded_pair", lambda: None)
    rc, out = _demo("--json", "--cache-dir", str(tmp_path))
    report = json.loads(out)
    assert rc == 0 and report["equal_to_target_only"] is True
    assert report["prompt"].split() == [str(t) for t in report["prompt_ids"]]
    assert report["continuation"].split() == [str(t) for t in report["continuation_ids"]]
    assert [t for s in report["spans"] for t in s["accepted_ids"] + s["target_ids"]] == report["continuation_ids"]
