"""Training at laptop scale: a BPE tokenizer and a small Qwen3 target trained on the
Python standard library's sources, and DFlash / Domino drafters distilled from the target's own
greedy continuations. ``python -m domino_kernels.train --help`` is the entry point; the recipe is
in docs/training.md. Needs ``tokenizers`` and ``transformers`` (training-only dependencies)."""
