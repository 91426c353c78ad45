"""The cached conversations of one split (generate.py, features.py) as training batches.

A batch is a set of whole conversations, right-padded to the longest: ids [B, T], the target pass
(taps, soft labels over the draft vocabulary, greedy ids) and the label mask (response positions).
The batches of an epoch are a pure function of (seed, epoch): conversations are shuffled, cut into
chunks of `CHUNK`, sorted by length inside a chunk (little padding) and packed up to a token budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from talon_rt.train.target_pass import TargetPass

from . import features, generate

CHUNK = 64  # conversations sorted together: ~2 % padding at batch 8 on this data


def data_folder(work: Path, split: str) -> Path:
    """Where the `data` step caches a split's shards and features under the work folder."""
    return work / "data" / split


@dataclass(frozen=True)
class Conversation:
    shard: int
    start: int         # offset in the shard's token stream
    length: int
    prompt_length: int


class Split:
    def __init__(self, folder: Path):
        self.folder = folder
        paths = [p for p in generate.shards(folder)
                 if features.feature_path(p).exists() and features.greedy_path(p).exists()]
        if not paths:
            raise FileNotFoundError(f"{folder}: no generated shards with features (run the 'data' step)")
        self.tokens, self.feats, self.greedy, self.convs = [], [], [], []
        self.sampled = 0
        for i, p in enumerate(paths):
            z = generate.load_shard(p)
            self.tokens.append(z["tokens"].astype(np.int64))
            self.feats.append(np.load(features.feature_path(p), mmap_mode="r"))
            self.greedy.append(np.load(features.greedy_path(p)).astype(np.int64))
            for s, n, pl in zip(z["starts"], z["lengths"], z["prompt_lengths"]):
                self.convs.append(Conversation(i, int(s), int(n), int(pl)))
            self.sampled += int(z["sampled"]) * len(z["lengths"])
        self.shards = len(paths)
        self.hidden = self.feats[0].shape[1] // 4

    def response_tokens(self) -> np.ndarray:
        """Every response token."""
        return np.concatenate([self.tokens[c.shard][c.start + c.prompt_length:c.start + c.length]
                               for c in self.convs])

    def target_tokens(self) -> np.ndarray:
        """Every response token, then the target's greedy token at every position (prompts included):
        the tokens the target emits, counted for the draft vocabulary."""
        return np.concatenate([self.response_tokens(), *self.greedy])

    @property
    def total_tokens(self) -> int:
        return sum(c.length for c in self.convs)

    def epoch(self, seed: int, epoch: int, budget: int) -> list[list[int]]:
        """Batches (lists of conversation indices) of one epoch, each with rows x longest <= budget
        (a conversation longer than the budget is a batch of its own)."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self.convs))
        batches = []
        for c0 in range(0, len(order), CHUNK):
            chunk = sorted(order[c0:c0 + CHUNK].tolist(), key=lambda i: self.convs[i].length)
            cur: list[int] = []
            for i in chunk:
                if cur and (len(cur) + 1) * self.convs[i].length > budget:
                    batches.append(cur)
                    cur = []
                cur.append(i)
            if cur:
                batches.append(cur)
        np.random.default_rng([seed, epoch, 1]).shuffle(batches)
        return batches

    def batch(self, rows: list[int], lm_head_rows: Tensor, pad: int,
              soft_fp32: bool = False) -> tuple[Tensor, TargetPass, Tensor]:
        """(ids [B, T], target pass with soft labels over the draft rows `lm_head_rows` [Vd, H],
        label mask [B, T]: label index p is allowed when it predicts a response token, i.e.
        prompt_length - 1 <= p <= length - 2)."""
        convs = [self.convs[i] for i in rows]
        T, H = max(c.length for c in convs), self.hidden
        ids = torch.full((len(convs), T), pad, dtype=torch.long)
        greedy = torch.zeros((len(convs), T), dtype=torch.long)
        bits = np.zeros((len(convs), T, 4 * H), dtype=np.int16)
        mask = torch.zeros((len(convs), T), dtype=torch.bool)
        for r, c in enumerate(convs):
            sl = slice(c.start, c.start + c.length)
            ids[r, :c.length] = torch.from_numpy(self.tokens[c.shard][sl])
            greedy[r, :c.length] = torch.from_numpy(self.greedy[c.shard][sl])
            bits[r, :c.length] = self.feats[c.shard][sl]
            mask[r, c.prompt_length - 1:c.length - 1] = True
        device = lm_head_rows.device  # the batch lives where the draft rows do (cpu or cuda)
        feats = features.from_bits(bits).to(device)
        last = feats[..., 3 * H:].float() if soft_fp32 else feats[..., 3 * H:]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=not soft_fp32):
            logits = last @ lm_head_rows.T
        return ids.to(device), TargetPass(feats[..., :3 * H].float(), logits.float().softmax(-1),
                                          greedy.to(device)), mask.to(device)
