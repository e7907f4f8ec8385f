"""The loop metric bench_models reports for the target's greedy continuations (issue: a demo
whose text is one repeated line): one line making up at least half of the non-blank lines, at
least 3 times."""
from bench.bench_models import dominant_line_share, is_loop


def test_repeated_line_is_a_loop():
    text = "import sys\n" * 6 + "x = 1\n"
    share, count = dominant_line_share(text)
    assert count == 6 and abs(share - 6 / 7) < 1e-12
    assert is_loop(text)


def test_python_is_not_a_loop():
    text = "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"
    assert dominant_line_share(text) == (0.25, 1)
    assert not is_loop(text)


def test_blank_lines_and_indentation_do_not_count():
    assert dominant_line_share("\n\n   \n") == (0.0, 0)
    # the same line indented differently is the same line; two repeats are not enough
    assert dominant_line_share("  a\na\n") == (1.0, 2) and not is_loop("  a\na\n")
    assert is_loop("#\n#\n#\nfoo\n")
