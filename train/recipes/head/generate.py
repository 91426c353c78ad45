"""Self-distilled responses: each prompt through the target's chat template, answered by the target
itself (greedy, or sampled for every `sample_every`-th shard), written in shards of `batch` prompts.

A shard file holds the whole conversations as one token stream: `tokens` [N] int32, `starts` [n]
and `lengths` [n] per conversation, `prompt_lengths` [n] (the rendered prompt; the rest is the
response, ending with an end-of-turn id unless cut at `max_new_tokens`), `ids` [n] prompt ids and
`sampled` (0/1). Existing shards are skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from talon_rt.train.console import console
from talon_rt.train.target_pass import autocast_for
from talon_rt.train.threads import ThreadGovernor

from . import target as target_mod
from .prompts import Prompt


@dataclass(frozen=True)
class GenerateSpec:
    batch: int = 32             # prompts per generate call and per shard (HF batched generate)
    max_new_tokens: int = 200   # most answers of a 135 M chat model end sooner; longer ones are cut
    sample_every: int = 4       # every 4th shard is sampled: 1/4 of the data off the greedy path
    temperature: float = 0.7
    seed: int = 0


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard{index:05d}.npz"


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard*.npz"))


def _pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(map(len, rows))
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def answer(lm, rows: list[list[int]], stop: list[int], spec: GenerateSpec, sampled: bool, seed: int) -> list[list[int]]:
    """The responses to the rendered prompts `rows`, each cut after its first stop id."""
    ids, mask = _pad_left(rows, stop[0])
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    torch.manual_seed(seed)
    extra = {"do_sample": True, "temperature": spec.temperature, "top_p": 1.0, "top_k": 0} if sampled \
        else {"do_sample": False}
    with torch.autocast(**autocast_for(lm)):
        out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=spec.max_new_tokens,
                          pad_token_id=stop[0], eos_token_id=stop, **extra)
    responses = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        responses.append(row[:cut])
    return responses


def run(lm, tok, prompts: list[Prompt], folder: Path, spec: GenerateSpec, threads: int = 0,
        on_shard=None, deadline: float | None = None) -> dict:
    """Generate every missing shard of `prompts` under `folder`; `on_shard(path)` runs after each new
    shard (the feature pass); no new shard starts after `deadline` (time.monotonic()). Returns {"shards", "conversations", "response_tokens", "seconds"}."""
    folder.mkdir(parents=True, exist_ok=True)
    stop = target_mod.stop_ids(lm, tok)
    governor = ThreadGovernor(threads)
    n_shards = (len(prompts) + spec.batch - 1) // spec.batch
    made, new_tokens, t0 = 0, 0, time.monotonic()
    for s in range(n_shards):
        path = shard_path(folder, s)
        if path.exists():
            continue
        if deadline is not None and time.monotonic() > deadline:
            break
        governor.update()
        chunk = prompts[s * spec.batch:(s + 1) * spec.batch]
        rows = [target_mod.render(tok, p.text) for p in chunk]
        sampled = s % spec.sample_every == spec.sample_every - 1
        t = time.monotonic()
        responses = answer(lm, rows, stop, spec, sampled, seed=spec.seed * 100_003 + s)
        convs = [r + a for r, a in zip(rows, responses)]
        lengths = np.array([len(c) for c in convs], dtype=np.int64)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=np.concatenate([np.asarray(c, dtype=np.int32) for c in convs]),
                 starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths=lengths,
                 prompt_lengths=np.array([len(r) for r in rows], dtype=np.int64),
                 ids=np.array([p.id for p in chunk]), sampled=np.int64(sampled))
        tmp.rename(path)
        n_new = sum(map(len, responses))
        made, new_tokens = made + 1, new_tokens + n_new
        console.log(f"generate {folder.name} shard {s + 1}/{n_shards}: {n_new:,} response tokens "
                    f"({'sampled' if sampled else 'greedy'}), {n_new / (time.monotonic() - t):,.0f} tok/s, "
                    f"{governor.threads} thr; total {new_tokens:,} in {time.monotonic() - t0:,.0f} s")
        if on_shard is not None:
            on_shard(path)
    return {"shards": n_shards, "new_shards": made, "seconds": time.monotonic() - t0}


def load_shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
