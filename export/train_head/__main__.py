"""python -m export.train_head --model M --out DIR [--work DIR] [STEP ...]

Trains an EAGLE-3 head for a Llama/Qwen-family target (Hugging Face folder or .gguf file) on the
target's own answers to prompts that share nothing with the benchmarks (export/train_head/prompts.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .pipeline import STEPS, run
from .recipe import DEFAULT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.train_head", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="*", choices=(*STEPS, []), default=[],
                    help=f"steps to run, in order (default: all of {', '.join(STEPS)})")
    ap.add_argument("--model", required=True, type=Path, help="target: Hugging Face folder or .gguf file")
    ap.add_argument("--out", required=True, type=Path, help="head folder to write (published EAGLE-3 layout)")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch: generated data, feature cache, checkpoints (default: <out>.work)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0: all cores while the machine is otherwise idle, else 1")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or args.out.with_name(args.out.name + ".work")
    run(list(args.steps) or list(STEPS), DEFAULT, args.model, args.out, work, args.threads)


if __name__ == "__main__":
    main()
