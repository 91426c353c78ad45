"""python -m export.demo {tokenizer,corpus,target,head,draftlm,readme,all} --out models/demo --work runs/demo
python -m export.demo prompts --out bench/prompts/stdlib_heldout.jsonl"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .pipeline import SIDE_STEPS, STEPS, run
from .prompts import DEFAULT_OUT as PROMPTS_OUT
from .recipe import DEFAULT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__)
    ap.add_argument("step", choices=(*STEPS, "all", *SIDE_STEPS),
                    help="recipe step; 'all' runs every model step in order; 'prompts' writes the held-out "
                         "benchmark prompts")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"committed model folders (default models/demo); for 'prompts' the JSONL file "
                         f"(default {PROMPTS_OUT})")
    ap.add_argument("--work", type=Path, default=Path("runs/demo"), help="scratch: token streams, checkpoints")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0: all cores while the machine is otherwise idle, else 1")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or (PROMPTS_OUT if args.step in SIDE_STEPS else Path("models/demo"))
    run(list(STEPS) if args.step == "all" else [args.step], DEFAULT, out, args.work, args.threads)


if __name__ == "__main__":
    main()
