"""Train a Llama-architecture causal LM (the target, or the 2-layer draft LM) on a token stream."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from talon_rt.train import loop
from talon_rt.train.loop import TrainSpec
from talon_rt.train.target_pass import AUTOCAST

from . import data
from .recipe import LMSpec
from .tokenizer import BOS_ID, EOS_ID, PAD_ID


def config(spec: LMSpec) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions, rope_theta=spec.rope_theta, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )


def build(spec: LMSpec, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config(spec))
    model.config.use_cache = False
    return model


def lm_loss(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    # ids: [B, T+1]; predict ids[:, 1:] from ids[:, :-1]
    with torch.autocast(**AUTOCAST):
        logits = model(input_ids=ids[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


def train(name: str, spec: LMSpec, tspec: TrainSpec, stream: np.ndarray, work: Path,
          threads: int = 0) -> tuple[LlamaForCausalLM, dict]:
    model = build(spec, tspec.seed)

    def step_loss(step: int) -> tuple[torch.Tensor, int]:
        ids = torch.from_numpy(data.random_windows(stream, tspec.batch, tspec.seq_len + 1, tspec.seed, step))
        return lm_loss(model, ids), tspec.batch * tspec.seq_len

    stats = loop.train(name, model, step_loss, tspec, work, threads)
    model.eval()
    return model, stats


@torch.no_grad()
def heldout_loss(model: LlamaForCausalLM, stream: np.ndarray, seq_len: int, max_windows: int | None = None,
                 batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping held-out windows."""
    model.eval()
    windows = torch.from_numpy(data.fixed_windows(stream, seq_len + 1, max_windows))
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch]
        total += float(lm_loss(model, ids)) * ids[:, 1:].numel()
        count += ids[:, 1:].numel()
    return total / count


def save(model: LlamaForCausalLM, out: Path) -> None:
    """HF Llama folder, fp16 safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.to(torch.float16).save_pretrained(str(out))
    model.to(torch.float32)
    model.config.use_cache = False


def load(folder: Path) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

