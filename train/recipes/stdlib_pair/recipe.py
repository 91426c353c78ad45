"""Every size and hyper-parameter of the stdlib pair's recipe, defined once."""
from __future__ import annotations

from dataclasses import dataclass

from talon_rt.train.eagle3 import HeadSpec
from talon_rt.train.loop import TrainSpec


@dataclass(frozen=True)
class LMSpec:
    """A Llama-architecture causal LM (transformers.LlamaForCausalLM)."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int         # < heads: grouped-query attention, as in the Llama 3 / Qwen targets we serve
    intermediate: int     # SwiGLU width, ~8/3 * hidden rounded to a multiple of 64
    vocab: int = 4096
    max_positions: int = 1024  # the runtime's default max_seq_len
    rope_theta: float = 10000.0


TOKENIZER_VOCAB = 4096

# 12 x 256, 8 heads over 2 KV heads: ~10.5 M parameters; deep and narrow so a one-layer head costs
# about 1/12 of a target step, and the taps (2, 6, 9) are distinct.
TARGET = LMSpec(layers=12, hidden=256, heads=8, kv_heads=2, intermediate=704)
# Sized to ~60 minutes at the ~1-1.5 k tokens/s this shared 2-core machine gives (3 k when idle);
# 8192 tokens per step, 720 steps.
TARGET_TRAIN = TrainSpec(tokens=5_898_240, batch=16, seq_len=512, lr=2e-3, warmup_steps=50)

HEAD = HeadSpec()
# ~27 minutes: a step costs a frozen target forward plus ttt_steps one-layer passes, about as much per
# position as a target training step. 256-token windows halve the cost of the unfused rollout attention.
HEAD_TRAIN = TrainSpec(tokens=4_500_000, batch=8, seq_len=256, lr=2e-3, warmup_steps=30, weight_decay=0.0,
                       eval_windows=200)

# The classic draft-model baseline: 2 layers of the target's width, ~3.4 M parameters.
DRAFT_LM = LMSpec(layers=2, hidden=256, heads=8, kv_heads=2, intermediate=704)
# ~5-8 minutes: a 2-layer step runs at 8-12 k tokens/s here.
DRAFT_LM_TRAIN = TrainSpec(tokens=3_686_400, batch=16, seq_len=512, lr=3e-3, warmup_steps=30)


@dataclass(frozen=True)
class Recipe:
    """The whole pair. `DEFAULT` is what models/stdlib-pair was trained with; tests pass a tiny one."""
    tokenizer_vocab: int = TOKENIZER_VOCAB
    target: LMSpec = TARGET
    target_train: TrainSpec = TARGET_TRAIN
    head: HeadSpec = HEAD
    head_train: TrainSpec = HEAD_TRAIN
    draft_lm: LMSpec = DRAFT_LM
    draft_lm_train: TrainSpec = DRAFT_LM_TRAIN
    corpus_limit: int | None = None  # first N train files only (smoke tests); None = the whole stdlib


DEFAULT = Recipe()


@dataclass(frozen=True)
class PromptSpec:
    """Benchmark prompts cut from the held-out files (train/recipes/stdlib_pair/prompts.py); builds no model."""
    context_lines: int = 30   # file lines before the function: something for the model to continue
    max_chars: int = 1500     # ~450 pair tokens: room for 128 new tokens and a 60-node tree in 1024 positions
    per_file: int = 2         # 35 held-out files: 50 prompts spread over all of them, none dominating
    min_lines: int = 6        # shorter functions leave too little body to generate


PROMPTS = PromptSpec()
