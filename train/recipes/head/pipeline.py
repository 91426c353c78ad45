"""The head recipe's steps over a work folder: `data` (prompts -> responses -> feature cache),
`train`, `eval` (float32 target, the published folder loaded as the exporter loads it), `readme`.
Each step resumes from what is already under `work`."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from talon_rt.export.errors import ExportError
from talon_rt.train.console import console
from talon_rt.train.target_pass import taps as target_taps

from . import features, generate, prompts, tokens
from .dataset import data_folder
from .recipe import HeadRecipe

STEPS = ("data", "train", "eval", "readme")
SPLITS = ("heldout", "valid", "train")  # generated in this order: the evaluation sets first


def split_prompts(recipe: HeadRecipe, stdlib_root: Path | None = None) -> dict[str, list[prompts.Prompt]]:
    d = recipe.data
    train, valid = prompts.training_prompts(stdlib_root, seed=d.generate.seed)
    heldout = prompts.heldout_prompts()
    return {"heldout": heldout[:d.heldout_prompts], "valid": valid[:d.valid_prompts],
            "train": train[:d.train_prompts]}


def run_data(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
             stdlib_root: Path | None = None) -> None:
    from . import target as target_mod

    lm, tok = target_mod.load(model)
    taps = target_taps(lm)
    pad = target_mod.stop_ids(lm, tok)[0]
    by_split = split_prompts(recipe, stdlib_root)
    stats_path = work / "data" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    kept = None if recipe.data.tokens is None else Path(recipe.data.tokens)
    if kept is not None:
        console.log(f"data: {tokens.restore(kept, work, SPLITS)} shards restored from {kept}")
    for split in SPLITS:
        folder = data_folder(work, split)
        t0 = time.monotonic()
        generate.run(lm, tok, by_split[split], folder, recipe.data.generate, threads,
                     on_shard=lambda path: features.run(lm, path, taps, pad))
        if kept is not None:
            console.log(f"data {split}: token ids -> {tokens.path(kept, split)}: {tokens.save(work, kept, split)}")
        for path in generate.shards(folder):  # shards generated before an interruption of the pass
            features.run(lm, path, taps, pad)
        seconds = time.monotonic() - t0 + stats.get(split, {}).get("seconds", 0.0)
        stats[split] = {"prompts": len(by_split[split]), "seconds": round(seconds, 1)}
        stats_path.write_text(json.dumps(stats, indent=1) + "\n")
        console.log(f"data {split}: {stats[split]}")


def run_train(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
              stdlib_root: Path | None = None) -> None:
    from . import train

    train.run(recipe, model, out, work, threads)


def run_eval(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
             stdlib_root: Path | None = None) -> None:
    from . import evaluate

    result = evaluate.run(out, model, work, recipe.eval_steps, recipe.eval_conversations,
                          work / "head" / "eval.json")
    console.log(f"eval: {result}")


def run_readme(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
               stdlib_root: Path | None = None) -> None:
    from . import readme

    readme.write(recipe, model, out, work)


RUNNERS = {"data": run_data, "train": run_train, "eval": run_eval, "readme": run_readme}


def run(steps: list[str], recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0,
        stdlib_root: Path | None = None) -> None:
    """`threads` 0: follow the machine's load (train/threads.py); > 0: fixed. `stdlib_root`:
    the standard library the `stdlib` prompts are read from (default: this interpreter's)."""
    claim_work(work, model)
    for step in steps:
        RUNNERS[step](recipe, model, out, work, threads, stdlib_root)


def model_identity(model: Path) -> str:
    """sha256 of a GGUF file, or of a folder's config.json with the name and size of its other files."""
    h = hashlib.sha256()
    if model.is_file():
        with open(model, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    h.update((model / "config.json").read_bytes())
    for f in sorted(p for p in model.iterdir() if p.is_file() and p.name != "config.json"):
        h.update(f"\0{f.name}\0{f.stat().st_size}".encode())
    return h.hexdigest()


def claim_work(work: Path, model: Path) -> None:
    """Record the model a work folder's data comes from; refuse a work folder of another model."""
    path = work / "model.json"
    identity = model_identity(model)
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded.get("identity") != identity:
            raise ExportError(f"--work {work}: holds data of another model ({recorded.get('model')}, sha256 "
                              f"{str(recorded.get('identity'))[:12]}), not of --model {model} (sha256 {identity[:12]}); "
                              f"use another --work or delete it")
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": str(model), "identity": identity}, indent=1) + "\n")
