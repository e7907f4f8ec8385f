"""Show a speculative decode: its output split per step into accepted draft tokens and the
target's own tokens (``GenerateResult.spans``), as text with the accepted drafts marked.

Convention (the ``demo`` command; README): on a colour terminal accepted draft tokens are green
(ANSI SGR 32) and the target's own tokens (the prefill's first token, plain steps, and each
drafted step's bonus or correction token) keep the terminal's colour; without colour (``--no-color``,
stdout not a terminal, ``NO_COLOR`` set, ``TERM=dumb``) accepted draft tokens stand between
``⟦`` and ``⟧`` (U+27E6 / U+27E7, not ASCII brackets, which Python code is full of). Control
characters in decoded text other than newline and tab are printed escaped (``\\x1b``), so model
output cannot drive the terminal and piped output never holds an ESC.
"""
from __future__ import annotations

import os
import unicodedata
from typing import Callable, Optional, Sequence

GREEN, RESET = "\x1b[32m", "\x1b[0m"
OPEN, CLOSE = "\u27e6", "\u27e7"
COLOR_CHOICES = ("auto", "always", "never")


def split_spans(tokens: Sequence[int], spans: Sequence) -> list:
    """``[(accepted_draft_ids, target_ids), ...]``, one pair per step of one request: its
    ``tokens`` cut by its ``spans`` (``StepSpan`` or ``(depth, accepted, emitted)``; the first
    ``min(accepted, emitted)`` tokens of a step are accepted drafts). Raises ValueError unless the
    spans cover ``tokens`` exactly."""
    out, i = [], 0
    for s in spans:
        _, accepted, emitted = s
        k = min(accepted, emitted)
        out.append((list(tokens[i:i + k]), list(tokens[i + k:i + emitted])))
        i += emitted
    if i != len(tokens):
        raise ValueError(f"argument 'spans' covers {i} tokens but 'tokens' has {len(tokens)}")
    return out


def ids_text(ids: Sequence[int]) -> str:
    """Ids as text when there is no tokenizer: each id followed by a space."""
    return "".join(f"{t} " for t in ids)


def span_texts(decode: Callable[[list], str], parts: Sequence) -> list:
    """The text of each ``(accepted_ids, target_ids)`` part, ``[(accepted_text, target_text)]``,
    cut from decodes of growing prefixes (a BPE token's text can depend on its neighbours, and a
    byte-level token can end inside a UTF-8 character: such an unfinished character, decoded as
    U+FFFD, moves to the next piece). The pieces concatenate to ``decode(all ids)`` whenever each
    prefix's decode extends the previous one; else that piece falls back to decoding its ids alone.
    Decodes O(steps) prefixes: fine for a demo's few hundred tokens."""
    ids = [t for a, b in parts for t in (*a, *b)]
    cuts = [0]
    for a, b in parts:
        cuts += [cuts[-1] + len(a), cuts[-1] + len(a) + len(b)]
    texts = []
    for j, k in enumerate(cuts):
        text = decode(ids[:k]) if k else ""
        texts.append(text if j == len(cuts) - 1 else text.rstrip("\ufffd"))
    pieces = []
    for j in range(len(cuts) - 1):
        prev, cur = texts[j], texts[j + 1]
        pieces.append(cur[len(prev):] if cur.startswith(prev) else decode(ids[cuts[j]:cuts[j + 1]]))
    return [(pieces[2 * i], pieces[2 * i + 1]) for i in range(len(parts))]


def printable(text: str) -> str:
    """``text`` with control characters other than newline and tab escaped (``\\x1b``)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else c.encode("unicode_escape").decode()
                   for c in text)


def render(pieces: Sequence, color: bool) -> str:
    """The continuation with each step's accepted draft text marked (module docstring)."""
    out = []
    for accepted, target in pieces:
        if accepted:
            a = printable(accepted)
            out.append(f"{GREEN}{a}{RESET}" if color else f"{OPEN}{a}{CLOSE}")
        out.append(printable(target))
    return "".join(out)


def legend(color: bool) -> str:
    mark = "green" if color else f"{OPEN}...{CLOSE}"
    return f"{mark}: draft tokens the target accepted; the rest: the target's own tokens (one per step)"


def use_color(choice: str, stream, environ: Optional[dict] = None) -> bool:
    """``choice``: "always", "never" or "auto" (colour iff ``stream`` is a terminal, ``NO_COLOR``
    is unset or empty and ``TERM`` is not "dumb"; https://no-color.org)."""
    if choice not in COLOR_CHOICES:
        raise ValueError(f"argument 'choice' must be one of {list(COLOR_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "always"
    env = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"
