"""python -m talon_rt.train.recipes.stdlib_pair {tokenizer,corpus,target,head,draftlm,readme,all} [--out DIR] [--work DIR]
python -m talon_rt.train.recipes.stdlib_pair prompts [--out FILE]

Trains the stdlib pair (a small Llama target, its EAGLE-3 head and a 2-layer draft LM) on the CPython
standard library; models/stdlib-pair/README.md records what was trained. Each step resumes from the
work folder when interrupted; `prompts` alone writes the held-out benchmark prompts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .pipeline import SIDE_STEPS, STEPS, run
from .prompts import DEFAULT_OUT as PROMPTS_OUT
from .recipe import DEFAULT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m talon_rt.train.recipes.stdlib_pair", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=(*STEPS, "all", *SIDE_STEPS),
                    help="recipe step; 'all' runs every model step in order; 'prompts' writes the held-out "
                         "benchmark prompts")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"committed model folders (default models/stdlib-pair); for 'prompts' the JSONL file "
                         f"(default {PROMPTS_OUT})")
    ap.add_argument("--work", type=Path, default=Path("runs/stdlib-pair"),
                    help="scratch: token streams, checkpoints (default runs/stdlib-pair)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0: all cores while the machine is otherwise idle, else 1")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or (PROMPTS_OUT if args.step in SIDE_STEPS else Path("models/stdlib-pair"))
    run(list(STEPS) if args.step == "all" else [args.step], DEFAULT, out, args.work, args.threads)


if __name__ == "__main__":
    main()
