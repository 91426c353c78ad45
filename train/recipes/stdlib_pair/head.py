"""The stdlib pair's `head` step: an EAGLE-3 head trained on the frozen target's pass over random
windows of the corpus stream, scored on the held-out stream (train/eagle3.py: the rollout and loss)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import LlamaForCausalLM

from talon_rt.export.reference import Eagle3Head
from talon_rt.train import loop
from talon_rt.train.console import console
from talon_rt.train.eagle3 import Agreement, HeadSpec, build, draft_vocab, rollout_loss, save
from talon_rt.train.target_pass import target_pass
from talon_rt.train.target_pass import taps as target_taps

from . import data, lm
from .recipe import Recipe


def ttt_loss(head: Eagle3Head, target: LlamaForCausalLM, ids: Tensor, spec: HeadSpec, taps) -> Tensor:
    draft_ids = torch.arange(len(head.d2t)) + head.d2t
    return rollout_loss(head, ids, target_pass(target, ids, draft_ids, taps), spec)


def train(recipe: Recipe, target: LlamaForCausalLM, stream: np.ndarray, work: Path,
          threads: int = 0) -> tuple[Eagle3Head, dict]:
    spec, tspec = recipe.head, recipe.head_train
    for p in target.parameters():
        p.requires_grad_(False)
    target.eval()
    taps = target_taps(target)
    head = build(target, spec, draft_vocab(stream, target.config.vocab_size, spec.draft_vocab), tspec.seed)

    def step_loss(step: int) -> tuple[Tensor, int]:
        ids = torch.from_numpy(data.random_windows(stream, tspec.batch, tspec.seq_len, tspec.seed, step))
        return ttt_loss(head, target, ids, spec, taps), tspec.batch * tspec.seq_len

    stats = loop.train("head", head, step_loss, tspec, work, threads)
    head.eval()
    return head, stats


@torch.no_grad()
def agreement(head: Eagle3Head, target: LlamaForCausalLM, stream: np.ndarray, seq_len: int, steps: int,
              max_windows: int | None = None, batch: int = 4) -> dict:
    """Top-1 agreement of the head (feeding back its own hidden) with the target's greedy token, per
    rollout step 1..steps, over held-out windows of the corpus stream (see `Agreement`)."""
    head.eval()
    taps = target_taps(target)
    draft_ids = torch.arange(len(head.d2t)) + head.d2t
    windows = torch.from_numpy(data.fixed_windows(stream, seq_len, max_windows))
    acc = Agreement(steps)
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch]
        acc.add(head, ids, target_pass(target, ids, draft_ids, taps))
    return acc.result()


def run(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    target = lm.load(out / "target")
    train_stream = data.load(work / "data" / "train.npy")
    heldout_stream = data.load(work / "data" / "heldout.npy")
    head, stats = train(recipe, target, train_stream, work / "head", threads)
    stats["agreement"] = agreement(head, target, heldout_stream, recipe.head_train.seq_len, 7,
                                   recipe.head_train.eval_windows)
    stats["params"] = sum(p.numel() for p in head.parameters())
    save(head, target, out / "eagle3")
    (work / "head" / "result.json").write_text(json.dumps(stats, indent=1))
    console.log(f"head: {stats}")
