"""Train the head on the cached conversations (train/eagle3.py: the head, its rollout loss; train/loop.py).

The draft vocabulary is the `draft_vocab` most frequent tokens the target emits in the training data
(its responses, plus its greedy token at every position, which ranks the tokens a small data set
never shows), fixed at the first run (`draft_ids.npy`) so a resume trains the same head. At every checkpoint the current
head is exported (published layout) to `<work>/latest/` and scored on the first
conversations of the valid split; the scores go to `<work>/head/curve.jsonl` (agreement vs training tokens).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from talon_rt.export.errors import ExportError
from talon_rt.train import eagle3, loop
from talon_rt.train.console import console
from talon_rt.train.target_pass import taps

from . import target as target_mod
from .dataset import Split, data_folder
from .evaluate import evaluate
from .recipe import HeadRecipe

CURVE_CONVERSATIONS = 16  # valid conversations scored at each checkpoint (~2.5 k positions, ~1 min here)


def draft_ids(split: Split, vocab: int, size: int, work: Path) -> torch.Tensor:
    path = work / "draft_ids.npy"
    if path.exists():
        ids = torch.from_numpy(np.load(path)).long()
        if len(ids) != size or (len(ids) and int(ids.max()) >= vocab):
            raise ExportError(f"{path}: {len(ids)} draft ids up to {int(ids.max()) if len(ids) else 0}, the recipe "
                              f"asks for {size} below the vocabulary's {vocab} (delete it to restart)")
        return ids
    if size > vocab:
        raise ExportError(f"the target's vocabulary ({vocab} tokens) is smaller than the head's draft vocabulary "
                          f"({size}); nothing written")
    ids = eagle3.draft_vocab(split.target_tokens(), vocab, size)
    work.mkdir(parents=True, exist_ok=True)
    np.save(path, ids.numpy())
    return ids


class Plan:
    """step -> batch of conversation indices, epoch after epoch (each epoch a pure function of the seed)."""

    def __init__(self, split: Split, seed: int, budget: int):
        self.split, self.seed, self.budget = split, seed, budget
        self.epochs: list[list[list[int]]] = []
        self.starts = [0]

    def __call__(self, step: int) -> tuple[int, list[int]]:
        while step >= self.starts[-1]:
            batches = self.split.epoch(self.seed, len(self.epochs), self.budget)
            self.epochs.append(batches)
            self.starts.append(self.starts[-1] + len(batches))
        e = next(i for i in range(len(self.epochs)) if step < self.starts[i + 1])
        return e, self.epochs[e][step - self.starts[e]]


def run(recipe: HeadRecipe, model: Path, out: Path, work: Path, threads: int = 0, device: str = "cpu",
        deadline: float | None = None, after_checkpoint=None, loaded=None) -> dict:
    """`device` cpu or cuda: where the target's rows, the head and the batches live; `deadline`
    (time.monotonic()): stop early there, checkpoint and publish the head trained so far;
    `after_checkpoint(<work>/latest)` runs after each checkpoint's export and score; `loaded`: the
    (target, tokenizer) `target.load` gave, else loaded here."""
    spec, tspec = recipe.head, recipe.train
    lm, tok = loaded or target_mod.load(model, device=device)
    pad = target_mod.stop_ids(lm, tok)[0]
    # the curve scores the valid split: choices made on it (lr, schedule) never see the held-out chat
    train, valid = Split(data_folder(work, "train")), Split(data_folder(work, "valid"))
    folder = work / "head"
    ids = draft_ids(train, lm.config.vocab_size, spec.draft_vocab, folder)
    head = eagle3.build(lm, spec, ids, tspec.seed).to(device)
    rows_of = lm.lm_head.weight.detach()[ids].float()
    plan = Plan(train, tspec.seed, tspec.batch * tspec.seq_len)
    console.log(f"train: {len(train.convs):,} conversations, {train.total_tokens:,} tokens in {train.shards} shards; "
                f"valid {len(valid.convs)}; draft vocab {len(ids)}")
    early = int(recipe.early_fraction * tspec.steps) if recipe.early_steps else 0
    shown = {"acc1": float("nan")}

    def step_loss(step: int):
        _, rows = plan(step)
        batch_ids, tp, mask = train.batch(rows, rows_of, pad, recipe.soft_fp32)
        stats: dict = {}
        loss = eagle3.rollout_loss(head, batch_ids, tp, spec, mask, stats,
                                   recipe.early_steps if step < early else None)
        a = shown["acc1"]
        shown["acc1"] = stats["acc1"] if a != a else 0.95 * a + 0.05 * stats["acc1"]
        return loss, sum(train.convs[i].length for i in rows)

    def progress() -> str:
        return f"acc1 {shown['acc1']:.3f}"

    def summary(state: dict) -> dict:
        return {**state, "conversations": len(train.convs), "data_tokens": train.total_tokens,
                "epochs": plan(max(0, state["step"] - 1))[0] + 1, "taps": list(taps(lm)),
                "params": sum(p.numel() for p in head.parameters())}

    def on_checkpoint(state: dict) -> None:
        eagle3.save(head, lm, work / "latest")
        (folder / "progress.json").write_text(json.dumps(summary(state), indent=1))
        score = evaluate(head, valid, rows_of, pad, recipe.eval_steps, CURVE_CONVERSATIONS)
        row = {"step": state["step"], "tokens": state["tokens"], "seconds": round(state["seconds"]),
               "epoch": plan(max(0, state["step"] - 1))[0], "loss": state["loss"], **score}
        with open(folder / "curve.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        console.log(f"checkpoint: head -> {work / 'latest'}; valid agreement {score['per_step']}")
        if after_checkpoint is not None:
            after_checkpoint(work / "latest")

    if recipe.train_minutes is not None:   # counted from the first step (not the target's loading)
        own = time.monotonic() + 60 * recipe.train_minutes
        deadline = own if deadline is None else min(deadline, own)
    stats = loop.train("head", head, step_loss, tspec, folder, threads, progress, on_checkpoint, deadline)
    stats = summary(stats)
    eagle3.save(head, lm, out)
    (folder / "result.json").write_text(json.dumps(stats, indent=1))
    console.log(f"head: {stats}")
    return stats
