"""Teacher-forced target pass over each generated shard, cached beside it.

Per conversation position: the three EAGLE-3 taps (hidden states entering layers `taps`, before the
final norm) and the target's final normed hidden state, bf16 stored as int16 bit patterns in
`<shard>.feat.npy` [N, 4H] (3.5 + 1.2 KB per token for H = 576); and the target's argmax over its
whole vocabulary in `<shard>.greedy.npy` [N] int32. The normed hidden recomputes the target's logits
over any draft vocabulary at training time (logits = hidden @ lm_head[draft ids].T), so the draft
vocabulary can be chosen after the pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from talon_rt.train.target_pass import autocast_for

from .generate import load_shard

BATCH_TOKENS = 2048  # rows per forward: ~4 x 512, the batch the throughput was measured at


def feature_path(shard: Path) -> Path:
    return shard.with_name(shard.name.replace(".npz", ".feat.npy"))


def greedy_path(shard: Path) -> Path:
    return shard.with_name(shard.name.replace(".npz", ".greedy.npy"))


def to_bits(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).cpu().numpy()


def from_bits(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(a, requirements=["C", "W"])).view(torch.bfloat16)


@torch.no_grad()
def forward(lm, ids: torch.Tensor, taps, bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, T, 4H]: taps low -> mid -> high then the normed last hidden, greedy [B, T]);
    `bf16` False: the target in float32, as the runtime's fp32 engine runs it."""
    with torch.autocast(**autocast_for(lm), enabled=bf16):
        out = lm(input_ids=ids.to(lm.device), output_hidden_states=True)
    last = out.hidden_states[-1]  # transformers: the last entry is after the final norm
    feats = torch.cat([out.hidden_states[i] for i in taps] + [last], dim=-1)
    return feats, out.logits.float().argmax(-1)


def run(lm, shard: Path, taps, pad: int) -> None:
    """Write the cache of one shard (skipped when present)."""
    if feature_path(shard).exists() and greedy_path(shard).exists():
        return
    z = load_shard(shard)
    H = lm.config.hidden_size
    N = int(z["lengths"].sum())
    feats = np.zeros((N, 4 * H), dtype=np.int16)
    greedy = np.zeros(N, dtype=np.int32)
    order = np.argsort(z["lengths"])
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * int(z["lengths"][order[j]]) <= BATCH_TOKENS:
            j += 1
        rows = order[i:j]
        T = int(z["lengths"][rows].max())
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        for r, c in enumerate(rows):
            s, n = int(z["starts"][c]), int(z["lengths"][c])
            ids[r, :n] = torch.from_numpy(z["tokens"][s:s + n].astype(np.int64))
        f, g = forward(lm, ids, taps)  # right padding: causal attention keeps real rows exact
        for r, c in enumerate(rows):
            s, n = int(z["starts"][c]), int(z["lengths"][c])
            feats[s:s + n] = to_bits(f[r, :n])
            greedy[s:s + n] = g[r, :n].cpu().numpy()
        i = j
    for path, arr in ((feature_path(shard), feats), (greedy_path(shard), greedy)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.rename(path)
