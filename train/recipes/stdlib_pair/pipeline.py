"""The recipe's steps. Each reads what the previous one wrote under `work` (scratch: token streams,
checkpoints) and writes its result under `out` (the committed model folders)."""
from __future__ import annotations

import json
from pathlib import Path

from talon_rt.train import corpus
from talon_rt.train.console import console

from . import data, lm, tokenizer
from .recipe import Recipe

STEPS = ("tokenizer", "corpus", "target", "head", "draftlm", "readme")
# Run on their own, never by 'all': they read the corpus but build nothing under models/stdlib-pair.
SIDE_STEPS = ("prompts",)


def run_tokenizer(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    train_files, heldout_files = corpus.load(limit=recipe.corpus_limit)
    tok = tokenizer.train(train_files, recipe.tokenizer_vocab)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "heldout_files.txt").write_text("".join(f.rel + "\n" for f in heldout_files))
    console.log(f"tokenizer: {tok.get_vocab_size()} tokens -> {out / 'tokenizer.json'}")


def run_corpus(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    tok = tokenizer.load(out / "tokenizer.json")
    train_files, heldout_files = corpus.load(limit=recipe.corpus_limit)
    stats = {}
    for split, files in (("train", train_files), ("heldout", heldout_files)):
        stream = data.encode(tok, files)
        data.save(work / "data" / f"{split}.npy", stream)
        stats[split] = {"files": len(files), "chars": sum(len(f.text) for f in files), "tokens": int(len(stream))}
    (work / "data" / "stats.json").write_text(json.dumps(stats, indent=1))
    console.log(f"corpus: {stats}")


def _train_lm(recipe: Recipe, out: Path, work: Path, which: str, threads: int) -> None:
    spec, tspec = (recipe.target, recipe.target_train) if which == "target" else (recipe.draft_lm, recipe.draft_lm_train)
    folder = out / which
    train_stream = data.load(work / "data" / "train.npy")
    heldout_stream = data.load(work / "data" / "heldout.npy")
    model, stats = lm.train(which, spec, tspec, train_stream, work / which, threads)
    stats["heldout_loss"] = lm.heldout_loss(model, heldout_stream, tspec.seq_len, tspec.eval_windows)
    stats["params"] = lm.param_count(model)
    stats["corpus_tokens"] = int(len(train_stream))
    lm.save(model, folder)
    tok = tokenizer.load(out / "tokenizer.json")
    tokenizer.save_for_transformers(tok, folder, spec.max_positions)
    (work / which / "result.json").write_text(json.dumps(stats, indent=1))
    console.log(f"{which}: {stats}")


def run_target(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    _train_lm(recipe, out, work, "target", threads)


def run_draftlm(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    _train_lm(recipe, out, work, "draft-lm", threads)


def run_head(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    from . import head

    head.run(recipe, out, work, threads)


def run_readme(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    from . import readme

    readme.write(recipe, out, work)


def run_prompts(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    """`out` is the JSONL file (bench/prompts/stdlib_heldout.jsonl)."""
    from . import prompts

    rows = prompts.write(out)
    console.log(f"prompts: {len(rows)} from the held-out files -> {out}")


RUNNERS = {"tokenizer": run_tokenizer, "corpus": run_corpus, "target": run_target,
           "head": run_head, "draftlm": run_draftlm, "readme": run_readme,
           "prompts": run_prompts}


def run(steps: list[str], recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    """`threads` 0: follow the machine's load (train/threads.py); > 0: fixed."""
    for step in steps:
        RUNNERS[step](recipe, out, work, threads)
