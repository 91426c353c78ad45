"""python -m talon_rt.train.recipes.head --model M --out DIR [--work DIR] [STEP ...]
python -m talon_rt.train.recipes.head prompts --out bench/prompts/chat_heldout.jsonl

Trains an EAGLE-3 head for a Llama/Qwen-family target (Hugging Face folder or .gguf file) on the
target's own answers to prompts that share nothing with the benchmarks (train/recipes/head/prompts.py).
Steps: data (prompts -> the target's answers -> cached features), train, eval, readme; `prompts`
alone writes the held-out chat prompt set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from talon_rt.export.errors import ExportError
from talon_rt.runtime.cli import ArgumentParser
from talon_rt.train.prompts import write_jsonl

from . import prompts
from .pipeline import STEPS, run
from .recipe import DEFAULT


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 a named error (one line on stderr), 2 bad arguments, 130 interrupted."""
    try:
        _main(argv)
    except ExportError as e:
        print(f"python -m talon_rt.train.recipes.head: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m talon_rt.train.recipes.head: interrupted (the work folder keeps what is done; run again to "
              "resume)", file=sys.stderr)
        return 130
    return 0


def check_model(model: Path) -> None:
    """A Hugging Face model folder or a GGUF file, not an EAGLE-3 head folder."""
    if model.is_file():
        with open(model, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ExportError(f"--model {model}: not a GGUF file (no GGUF magic) nor a model folder")
        return
    if not model.is_dir():
        raise ExportError(f"--model {model}: not found")
    config = model / "config.json"
    try:
        cfg = json.loads(config.read_text())
    except FileNotFoundError:
        raise ExportError(f"--model {model}: no config.json (not a Hugging Face model folder)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ExportError(f"--model {config}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"--model {config}: not a JSON object")
    if "draft_vocab_size" in cfg or any("eagle" in str(a).lower() for a in cfg.get("architectures") or []):
        raise ExportError(f"--model {model}: an EAGLE-3 head folder; --model is the target model")


def check_out(out: Path) -> None:
    """--out can be created and written (checked before hours of work, not after)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--out {out}: {parent} cannot be written")


def _main(argv: list[str] | None) -> None:
    ap = ArgumentParser(prog="python -m talon_rt.train.recipes.head", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="*", metavar="STEP",
                    help=f"steps to run, in order: {', '.join(STEPS)} (default: all), or 'prompts'")
    ap.add_argument("--model", type=Path, help="target: Hugging Face folder or .gguf file")
    ap.add_argument("--out", required=True, type=Path,
                    help="head folder to write (published EAGLE-3 layout); for 'prompts' the JSONL file")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch: generated data, feature cache, checkpoints (default: <out>.work)")
    ap.add_argument("--train-tokens", type=int, default=None,
                    help=f"training length in tokens (the cosine schedule's end; default {DEFAULT.train.tokens:,})")
    ap.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {DEFAULT.train.lr:g})")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help=f"tokens per optimiser step, padding counted (default "
                         f"{DEFAULT.train.batch * DEFAULT.train.seq_len}; a multiple of {DEFAULT.train.seq_len})")
    ap.add_argument("--warmup-steps", type=int, default=None,
                    help=f"linear warmup steps (default {DEFAULT.train.warmup_steps})")
    ap.add_argument("--early-steps", type=int, default=None,
                    help="rollout steps of the first --early-fraction of training (default: the full "
                         f"{DEFAULT.head.ttt_steps} throughout; a step's cost grows with its rollout)")
    ap.add_argument("--early-fraction", type=float, default=None,
                    help="share of the optimiser steps that roll out --early-steps (default 0.75 with it)")
    ap.add_argument("--hard-weight", type=float, default=None,
                    help=f"weight of a hard (argmax) cross-entropy beside the soft one (default "
                         f"{DEFAULT.head.hard_weight:g})")
    ap.add_argument("--soft-fp32", action="store_true",
                    help="the target's soft labels from a float32 product (default: bf16 autocast)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="end the train step after this many minutes, checkpointed, the head published")
    ap.add_argument("--eval-conversations", type=int, default=None,
                    help="held-out conversations the eval step scores (default: all)")
    ap.add_argument("--tokens", type=Path, default=None,
                    help="a folder of the generated conversations as token ids (tokens-<split>.npz, a few MB): "
                         "shards found there are restored instead of generated, and every split generated is "
                         "written back there (commit it: any machine rebuilds the features from it)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0: all cores while the machine is otherwise idle, else 1")
    args = ap.parse_args(argv)
    if args.steps == ["prompts"]:
        rows = prompts.heldout_prompts()
        write_jsonl(args.out, [{"id": p.id, "prompt": p.text} for p in rows])
        print(f"{len(rows)} held-out chat prompts -> {args.out}")
        return
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown step {unknown[0]!r} (steps: {', '.join(STEPS)}; or 'prompts' alone)")
    if args.model is None:
        ap.error("--model is required (a Hugging Face folder or a .gguf file)")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0, got {args.threads}")
    if args.eval_conversations is not None and args.eval_conversations < 1:
        ap.error(f"--eval-conversations must be >= 1, got {args.eval_conversations}")
    if args.lr is not None and not math.isfinite(args.lr):
        ap.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.early_steps is not None and not 1 <= args.early_steps <= DEFAULT.head.ttt_steps:
        ap.error(f"--early-steps must lie in 1..{DEFAULT.head.ttt_steps}, got {args.early_steps}")
    if args.early_fraction is not None and (args.early_steps is None or not 0.0 <= args.early_fraction <= 1.0):
        ap.error(f"--early-fraction needs --early-steps and must lie in [0, 1], got {args.early_fraction}")
    if args.hard_weight is not None and not (math.isfinite(args.hard_weight) and args.hard_weight >= 0):
        ap.error(f"--hard-weight must be a finite number >= 0, got {args.hard_weight}")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        ap.error(f"--minutes must be a number > 0, got {args.minutes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or args.out.with_name(args.out.name + ".work")
    train = DEFAULT.train
    batch = None if args.batch_tokens is None else args.batch_tokens // train.seq_len
    for flag, value, field in (("--train-tokens", args.train_tokens, "tokens"), ("--lr", args.lr, "lr"),
                               ("--batch-tokens", batch, "batch"), ("--warmup-steps", args.warmup_steps,
                                                                     "warmup_steps")):
        if value is not None:
            if value <= 0:
                least = f"at least {train.seq_len}" if flag == "--batch-tokens" else "> 0"
                ap.error(f"{flag} must be {least}, got {getattr(args, flag[2:].replace('-', '_'))}")
            train = replace(train, **{field: value})
    if args.tokens is not None and args.tokens.exists() and not args.tokens.is_dir():
        ap.error(f"--tokens {args.tokens}: exists and is not a folder")
    data = replace(DEFAULT.data, tokens=None if args.tokens is None else str(args.tokens))
    head = DEFAULT.head if args.hard_weight is None else replace(DEFAULT.head, hard_weight=args.hard_weight)
    early = {} if args.early_steps is None else {
        "early_steps": args.early_steps,
        "early_fraction": 0.75 if args.early_fraction is None else args.early_fraction}
    recipe = replace(DEFAULT, data=data, head=head, train=train, eval_conversations=args.eval_conversations,
                     train_minutes=args.minutes, soft_fp32=args.soft_fp32 or DEFAULT.soft_fp32, **early)
    check_model(args.model)
    check_out(args.out)
    run(args.steps or list(STEPS), recipe, args.model, args.out, work, args.threads)


if __name__ == "__main__":
    sys.exit(main())
