"""A byte-level BPE tokenizer trained on the training split of the corpus.

Special tokens come first, at fixed ids: ``<|endoftext|>`` (0) is both bos and eos (documents
are separated by it), ``<|mask|>`` (1) fills the draft block's slots 1..B-1 (``mask_token_id``;
it never occurs in text, so its embedding row is only trained through the drafters' inputs).
"""
from __future__ import annotations

import os

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = [EOS_TOKEN, MASK_TOKEN]
EOS_ID, MASK_ID = 0, 1


def train_tokenizer(texts, vocab_size: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for name, want in ((EOS_TOKEN, EOS_ID), (MASK_TOKEN, MASK_ID)):
        got = tok.token_to_id(name)
        if got != want:
            raise RuntimeError(f"special token {name} got id {got}, expected {want}")
    return tok


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path if path.endswith(".json") else os.path.join(path, "tokenizer.json"))
