"""Text <-> ids through a checkpoint's ``tokenizer.json`` (the ``tokenizers`` package), when both
exist; otherwise the CLI works on ids (``--prompt-ids``) and prints ids."""
from __future__ import annotations

import os
from typing import Optional


class Tokenizer:
    def __init__(self, path: str):
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(directory: str) -> Optional[Tokenizer]:
    """The tokenizer of a checkpoint directory, or None when it has no tokenizer.json or the
    ``tokenizers`` package is not installed."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
        return None
    try:
        return Tokenizer(path)
    except ImportError:
        return None
