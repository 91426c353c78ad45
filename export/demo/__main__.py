"""python -m export.demo {tokenizer,corpus,target,head,draftlm,all} --out models/demo --work runs/demo"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .pipeline import STEPS, run
from .recipe import DEFAULT


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__)
    ap.add_argument("step", choices=(*STEPS, "all"), help="recipe step; 'all' runs every step in order")
    ap.add_argument("--out", type=Path, default=Path("models/demo"), help="committed model folders")
    ap.add_argument("--work", type=Path, default=Path("runs/demo"), help="scratch: token streams, checkpoints")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads; 0: all cores while the machine is otherwise idle, else 1")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(list(STEPS) if args.step == "all" else [args.step], DEFAULT, args.out, args.work, args.threads)


if __name__ == "__main__":
    main()
