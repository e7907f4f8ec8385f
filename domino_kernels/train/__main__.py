"""``python -m domino_kernels.train {tokenizer,target,draft,all} --out DIR --seed S ...``

Layout of DIR (the shipped default is ``domino_kernels/assets/default``):
  tokenizer.json        the BPE tokenizer (stage ``tokenizer``)
  target/               Qwen3 target, Hugging Face layout (stage ``target``)
  draft-domino/         DFlash backbone + Domino head, public draft format (stage ``draft``)
  draft-dflash/         DFlash-only drafter with the same step budget (stage ``draft``)
  train.log             the log of every stage
The ``draft`` stage first regenerates its distillation data (the target's continuations of
corpus windows, greedy or for a --distill-sampled-frac share sampled at T=1, with their target
features and final hidden states) in memory. Every stage is deterministic given
--seed and its step counts (``--target-steps``, ``--draft-steps``); a time budget (``--*-minutes``)
picks the step count by timing a few steps, and the chosen count is written to the stage's
train_meta.json so the run can be repeated exactly.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch


def _log_to(path):
    f = open(path, "a", buffering=1)

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        f.write(line + "\n")
    return log


def stage_tokenizer(args, log):
    from . import data, tokenizer

    files = data.corpus_files("train", limit=args.max_files)
    tok = tokenizer.train_tokenizer(data.read_texts(files), args.vocab_size)
    os.makedirs(args.out, exist_ok=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    log(f"tokenizer: {tok.get_vocab_size()} tokens from {len(files)} files")


def load_streams(args, tok):
    from . import data
    from .tokenizer import EOS_ID

    train = data.encode_corpus(tok, data.corpus_files("train", limit=args.max_files), EOS_ID)
    held = data.encode_corpus(tok, data.corpus_files("heldout", limit=args.max_files), EOS_ID)
    return train, held


def stage_target(args, log):
    from . import target, tokenizer

    tok_path = os.path.join(args.out, "tokenizer.json")
    tok = tokenizer.load_tokenizer(tok_path)
    train, held = load_streams(args, tok)
    log(f"corpus: {train.numel()} training tokens, {held.numel()} held-out tokens")
    shape = target.target_shape(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden,
                               intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                               num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                               head_dim=args.head_dim)
    recipe = target.TargetRecipe(seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr)
    target.train_target(train, held, os.path.join(args.out, "target"), seed=args.seed,
                        steps=args.target_steps, minutes=args.target_minutes, shape=shape,
                        recipe=recipe, tokenizer_path=tok_path, log=log, log_every=args.log_every)


def stage_draft(args, log):
    from . import distill

    distill.run_draft_stage(args, log)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m domino_kernels.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["tokenizer", "target", "draft", "all"])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--max-files", type=int, default=None, help="use only the first N corpus files")
    ap.add_argument("--log-every", type=int, default=25)
    g = ap.add_argument_group("tokenizer")
    g.add_argument("--vocab-size", type=int, default=4096)
    g = ap.add_argument_group("target")
    g.add_argument("--target-steps", type=int, default=None)
    g.add_argument("--target-minutes", type=float, default=30.0)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--intermediate", type=int, default=768)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--head-dim", type=int, default=64)
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=3e-3)
    g = ap.add_argument_group("drafters")
    g.add_argument("--variants", default="domino,dflash",
                   help="comma list of drafters to train: domino, dflash")
    g.add_argument("--draft-steps", type=int, default=None)
    g.add_argument("--draft-minutes", type=float, default=10.0,
                   help="time budget of the first drafter; the others get the same step count")
    g.add_argument("--draft-layers", type=int, default=1)
    g.add_argument("--target-layer-ids", default="0,1,2",
                   help="target layers whose features the drafters read (comma list, 0-based)")
    g.add_argument("--last-layer-feature", choices=["final_norm", "residual"], default="final_norm",
                   help="feature of the target's last layer if listed: the final norm's output "
                        "(HF hidden_states[L], the reference) or the raw residual stream (vLLM)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--gru-hidden", type=int, default=256)
    g.add_argument("--emb-dim", type=int, default=64)
    g.add_argument("--gamma", type=float, default=7.0, help="per-position loss decay exp(-k/gamma)")
    g.add_argument("--draft-lr", type=float, default=2e-3)
    g.add_argument("--draft-batch", type=int, default=16)
    g.add_argument("--anchors", type=int, default=4, help="blocks (anchors) sampled per sequence")
    g.add_argument("--distill-prompts", type=int, default=384)
    g.add_argument("--distill-prompt-len", type=int, default=64)
    g.add_argument("--distill-new-tokens", type=int, default=96)
    g.add_argument("--distill-batch", type=int, default=128, help="sequences per generation batch")
    g.add_argument("--distill-sampled-frac", type=float, default=0.5,
                   help="share of distillation sequences continued by sampling the target at T=1 "
                        "(seeded) instead of greedily")
    g.add_argument("--kl-weight", type=float, default=0.5,
                   help="per-slot loss kl_weight*KL(p_target||q) + (1-kl_weight)*CE")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    os.makedirs(args.out, exist_ok=True)
    log = _log_to(os.path.join(args.out, "train.log"))
    log(f"args: {vars(args)}")
    stages = ["tokenizer", "target", "draft"] if args.stage == "all" else [args.stage]
    for s in stages:
        {"tokenizer": stage_tokenizer, "target": stage_target, "draft": stage_draft}[s](args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
