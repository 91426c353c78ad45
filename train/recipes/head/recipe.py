"""Every size and hyper-parameter of the head recipe, defined once (`DEFAULT`; tests pass a tiny one)."""
from __future__ import annotations

from dataclasses import dataclass, field

from talon_rt.train.eagle3 import HeadSpec
from talon_rt.train.loop import TrainSpec

from .generate import GenerateSpec


@dataclass(frozen=True)
class DataSpec:
    generate: GenerateSpec = field(default_factory=GenerateSpec)
    train_prompts: int | None = None    # first N of the shuffled training prompts (None: all ~3,150)
    valid_prompts: int = 32             # of the valid split: enough to compare learning rates
    heldout_prompts: int | None = None  # of the held-out chat set (None: all 88)
    tokens: str | None = None           # a folder of tokens-<split>.npz: restored before, updated after (tokens.py)


@dataclass(frozen=True)
class HeadRecipe:
    data: DataSpec = field(default_factory=DataSpec)
    # 8192 draft tokens: ~20 MB in fp16 with the layer, within the repository's weight budget
    head: HeadSpec = field(default_factory=lambda: HeadSpec(draft_vocab=8192, ttt_steps=7, intermediate=0))
    # batch * seq_len = tokens per step (whole conversations up to it, padding counted). 3 M tokens:
    # ~8 h at the ~100 tokens/s a step of the 7-step rollout gets on this shared 2-core machine.
    # lr: EAGLE-3 uses 1e-4 for 8 B targets at large batch; a 576-wide head on little data wants more
    train: TrainSpec = field(default_factory=lambda: TrainSpec(
        tokens=3_000_000, batch=8, seq_len=512, lr=5e-4, warmup_steps=20, weight_decay=0.0,
        ckpt_minutes=5.0))
    # the rollout's cost grows with its steps: the first `early_fraction` of the optimiser steps roll
    # out `early_steps` (None: all ttt_steps throughout), the rest the full ttt_steps
    early_steps: int | None = None
    early_fraction: float = 0.0
    train_minutes: float | None = None  # stop the train step after this many minutes (checkpointed)
    soft_fp32: bool = False      # the target's soft labels from a float32 product (default: bf16 autocast)
    eval_steps: int = 7
    eval_conversations: int | None = None  # held-out conversations the eval step scores (None: all)


DEFAULT = HeadRecipe()
