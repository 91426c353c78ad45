"""<out>/README.md for a trained head, written from the recorded results (never typed by hand)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch
import transformers

from talon_rt.train.readme import agreement_lines, folder_mb, load_json, notes_lines

from . import prompts
from .dataset import Split, data_folder
from .recipe import HeadRecipe

SOURCES = {
    "stdlib": "instructions synthesised from docstrings of the CPython standard library's public functions "
              "(train files of the stdlib corpus only; `models/stdlib-pair/heldout_files.txt` never read)",
    "word": "arithmetic word problems from templates written for this recipe (names, items, numbers drawn by seed)",
    "topic": "writing and explanation tasks over seed topics written for this recipe (held-out topics excluded)",
}


def command(recipe: HeadRecipe, model: Path, out: Path, work: Path) -> str:
    """The CLI call that trains this head (flags for every training setting off the default)."""
    from .recipe import DEFAULT

    t, d = recipe.train, DEFAULT.train
    flags = [(f"--train-tokens {t.tokens}", t.tokens != d.tokens), (f"--lr {t.lr:g}", t.lr != d.lr),
             (f"--batch-tokens {t.batch * t.seq_len}", t.batch * t.seq_len != d.batch * d.seq_len),
             (f"--warmup-steps {t.warmup_steps}", t.warmup_steps != d.warmup_steps),
             (f"--early-steps {recipe.early_steps} --early-fraction {recipe.early_fraction:g}",
              recipe.early_steps is not None),
             (f"--hard-weight {recipe.head.hard_weight:g}", recipe.head.hard_weight != DEFAULT.head.hard_weight),
             ("--soft-fp32", recipe.soft_fp32 != DEFAULT.soft_fp32),
             (f"--minutes {recipe.train_minutes or 0:g}", recipe.train_minutes is not None),
             (f"--tokens {_shown(Path(recipe.data.tokens or '.'))}", recipe.data.tokens is not None)]
    extra = "".join(" " + f for f, off in flags if off)
    return (f".venv/bin/python -m talon_rt.train.recipes.head --model {_shown(model)} --out {_shown(out)} "
            f"--work {_shown(work)}{extra}")


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it lies inside it, else as given."""
    rel = os.path.relpath(path) if path.is_absolute() else str(path)
    return str(path) if rel.startswith("..") else rel


def _source_counts(split: Split) -> tuple[Counter, Counter]:
    convs, tokens = Counter(), Counter()
    for i, p in enumerate(generate_ids(split)):
        c = split.convs[i]
        src = p.split(":", 1)[0]
        convs[src] += 1
        tokens[src] += c.length - c.prompt_length
    return convs, tokens


def generate_ids(split: Split) -> list[str]:
    from .generate import load_shard, shards

    return [str(x) for p in shards(split.folder)[:split.shards] for x in load_shard(p)["ids"]]


def _table(header: str, rows: list[list[str]]) -> list[str]:
    cols = header.count("|") - 1
    return [header, "|" + "---|" * cols, *("| " + " | ".join(r) + " |" for r in rows)]


def write(recipe: HeadRecipe, model: Path, out: Path, work: Path) -> None:
    result = load_json(work / "head" / "result.json")
    running = result is None
    result = result or load_json(work / "head" / "progress.json") or {}
    ev = load_json(work / "head" / "eval.json")
    stats = load_json(work / "data" / "stats.json") or {}
    curve_path = work / "head" / "curve.jsonl"
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()] if curve_path.is_file() else []
    train, heldout = Split(data_folder(work, "train")), Split(data_folder(work, "heldout"))
    convs, tokens = _source_counts(train)
    spec, tspec, g = recipe.head, recipe.train, recipe.data.generate
    cfg = json.loads((out / "config.json").read_text())
    lines = [
        f"# EAGLE-3 head for `{model.name}`",
        "",
        "Trained on this machine (2 CPU cores) by `python -m talon_rt.train.recipes.head`; this file is written by the",
        "recipe from its recorded results.",
        "",
        "    " + command(recipe, model, out, work),
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}; prompt order, sampling and",
        "initialisation are seeded, so a rerun matches up to floating-point reduction order. Steps",
        "(`data`, `train`, `eval`, `readme`) resume from the work folder when interrupted.",
        "",
        "## Data: the target's own answers",
        "",
        "Each prompt goes through the target's chat template and the target answers it (transformers",
        f"`generate`, bf16 autocast, at most {g.max_new_tokens} new tokens, stopping at end of turn): greedy,",
        f"except every {g.sample_every}th shard of {g.batch} prompts, sampled at temperature {g.temperature}.",
        "The prompt sources share nothing with HumanEval, MT-bench, GSM8K or bench/prompts/*:",
        "",
        *(f"- `{k}`: {v}." for k, v in SOURCES.items()),
        "",
        *_table("| source | conversations | response tokens |",
                [[k, f"{convs[k]:,}", f"{tokens[k]:,}"] for k in SOURCES]
                + [["all", f"{sum(convs.values()):,}", f"{sum(tokens.values()):,}"]]),
        "",
        f"{train.sampled:,} of the {len(train.convs):,} training conversations are sampled; "
        f"{train.total_tokens:,} tokens with the prompts. Held-out: {len(heldout.convs)} greedy conversations "
        f"on {len({i.split(':')[1] for i in generate_ids(heldout)})} held-out topics "
        f"(`bench/prompts/chat_heldout.jsonl`, never trained on: a topic is held out when sha256(topic) mod "
        f"{prompts.HELDOUT_TOPIC_MOD} == 0).",
        *(["Wall time per split (generation + teacher-forced feature pass, on a shared machine): "
           + ", ".join(f"{k} {v['seconds'] / 60:.0f} min" for k, v in stats.items()) + "."] if stats else []),
        "",
        "## Head",
        "",
        f"One Llama decoder layer over the target's taps hidden_states[{', '.join(map(str, result.get('taps', [])))}]"
        f" (fc 3H -> H, attention over cat(embedding, hidden), SwiGLU {cfg['intermediate_size']}),",
        f"norm and lm_head over a draft vocabulary of the {cfg['draft_vocab_size']:,} tokens the target emits "
        "most often in the training data (responses, then its greedy token at every position; `d2t`, `t2d`); "
        f"the embedding is the target's. {result.get('params', 0) / 1e6:.2f} M "
        "parameters; norm and lm_head rows initialised from the target's.",
        "",
        "## Training",
        "",
        f"Training-time test with {spec.ttt_steps} rollout steps (step weight {spec.step_weight_decay}^j)"
        + (f", {recipe.early_steps} steps for the first {recipe.early_fraction:.0%} of the optimiser steps "
           "(a step's cost grows with its rollout)" if recipe.early_steps else "")
        + ", soft cross-entropy against the target's distribution restricted to the draft vocabulary"
        + (f" (from a float32 product)" if recipe.soft_fp32 else "")
        + (f" plus {spec.hard_weight:g} x the hard cross-entropy of its argmax" if spec.hard_weight else "")
        + " (positions whose",
        "target argmax lies outside it masked), response positions only. AdamW (0.9, 0.95), "
        f"lr {tspec.lr:g} with {tspec.warmup_steps} warmup steps and cosine decay over {tspec.steps:,} steps, "
        f"up to {tspec.batch * tspec.seq_len:,} tokens per step (whole conversations), bf16 autocast; the "
        "target's features are computed once and cached (features.py).",
        "",
    ]
    if result:
        lines += [("Training in progress; this head is its checkpoint after " if running else "Ran ")
                  + f"{result['step']:,} steps, {result['tokens']:,} tokens ({result['epochs']} epochs over the "
                  f"data), {result['seconds'] / 3600:.2f} h, {result['tokens'] / max(1, result['seconds']):,.0f} "
                  f"tokens/s; final train loss (weighted sum over steps) {result['loss']:.3f}.", ""]
    if ev:
        lines += [
            "## Held-out agreement",
            "",
            f"Top-1 agreement with the target's greedy token on {ev['positions']:,} response positions of "
            f"{ev.get('conversations', len(heldout.convs))} held-out conversations, target in float32, the head loaded by `talon_rt.export.checkpoints.load_head` and",
            "feeding back its own hidden states (step k drafts the k-th token after the last target feature):",
            "",
            *agreement_lines(ev),
            "",
        ]
    if curve:
        lines += [
            "Agreement vs training tokens (cached bf16 features, the first conversations of the valid split):",
            "",
            *_table("| step | tokens | epoch | loss | step 1 | step 2 | step 4 | step 7 | chain mean |",
                    [[f"{r['step']:,}", f"{r['tokens'] / 1e6:.2f} M", str(r["epoch"]), f"{r['loss']:.3f}",
                      *(f"{r['per_step'][k]:.3f}" for k in (0, 1, 3, 6) if k < len(r["per_step"])),
                      f"{r['chain_mean_accepted']:.2f}"] for r in _thin(curve, 12)]),
            "",
        ]
    ablation = work / "ablation" / "ablation.md"
    if ablation.is_file():
        abl = load_json(work / "ablation" / "ablation.json") or {}
        lines += [
            "## Ablation",
            "",
            "Each variant trained a fresh head on this data on one core (two variants at a time, one thread "
            f"each), its cosine schedule sized from a throughput probe to end within {abl.get('minutes', 0):g} "
            "minutes (`python scripts/head_ablation.py`; the probes, slowed by their first steps, "
            "underestimated the throughput, so `train min` gives what each run took); scored on the valid "
            "split (cached bf16 features), never on the held-out chat:",
            "",
            *ablation.read_text().strip().splitlines(),
            "",
        ]
    if recipe.data.tokens is not None:
        lines += [f"The generated conversations are kept as token ids in `{_shown(Path(recipe.data.tokens))}` "
                  "(`tokens-<split>.npz`); `--tokens` restores them, so a rerun regenerates nothing and "
                  "recomputes only the features.", ""]
    lines += [
        *notes_lines(work),
        "## Files",
        "",
        f"- `config.json`, `model.safetensors` ({folder_mb(out):.1f} MB, fp16; `d2t` int64, `t2d` bool): the published "
        "EAGLE-3 layout (`fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d`; no `embed_tokens`).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def _thin(rows: list[dict], n: int) -> list[dict]:
    if len(rows) <= n:
        return rows
    pick = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in pick]
