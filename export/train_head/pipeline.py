"""The head recipe's steps over a work folder: `data` (prompts -> responses -> feature cache),
`train`, `eval`, `readme`. Each step resumes from what is already under `work`."""
from __future__ import annotations

import json
import time
from pathlib import Path

from export.demo.loop import console

from . import features, generate, prompts
from .recipe import HeadRecipe

STEPS = ("data", "train", "eval", "readme")
SPLITS = ("heldout", "valid", "train")  # generated in this order: the evaluation sets first


def split_prompts(recipe: HeadRecipe, root: Path | None = None) -> dict[str, list[prompts.Prompt]]:
    d = recipe.data
    train, valid = prompts.training_prompts(root, seed=d.generate.seed)
    heldout = prompts.heldout_prompts()
    return {"heldout": heldout[:d.heldout_prompts], "valid": valid[:d.valid_prompts],
            "train": train[:d.train_prompts]}


def data_folder(work: Path, split: str) -> Path:
    return work / "data" / split


def run_data(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
             stdlib_root: Path | None = None) -> None:
    from . import target as target_mod

    lm, tok = target_mod.load(model)
    taps = target_mod.taps(lm)
    pad = target_mod.stop_ids(lm, tok)[0]
    stats = {}
    for split, rows in split_prompts(recipe, stdlib_root).items():
        folder = data_folder(work, split)
        t0 = time.monotonic()
        generate.run(lm, tok, rows, folder, recipe.data.generate, threads,
                     on_shard=lambda path: features.run(lm, path, taps, pad))
        for path in generate.shards(folder):  # shards generated before an interruption of the pass
            features.run(lm, path, taps, pad)
        stats[split] = {"prompts": len(rows), "seconds": time.monotonic() - t0}
        console.log(f"data {split}: {stats[split]}")
    prompts.write_jsonl(work / "data" / "heldout_prompts.jsonl", split_prompts(recipe, stdlib_root)["heldout"])


def run(steps: list[str], recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0) -> None:
    runners = {"data": run_data}
    for step in steps:
        runners[step](recipe, model, out, work, threads)
