"""Token streams: every file becomes BOS + tokens + EOS, concatenated in the corpus order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from talon_rt.train.corpus import CorpusFile

from .tokenizer import EOS_ID


def encode(tok: Tokenizer, files: list[CorpusFile]) -> np.ndarray:
    """uint16 stream [n_tokens] (vocab <= 65536)."""
    encs = tok.encode_batch([f.text for f in files])  # post-processor prepends BOS
    out = np.concatenate([np.asarray(e.ids + [EOS_ID], dtype=np.uint16) for e in encs])
    return out


def save(path: Path, stream: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, stream)


def load(path: Path) -> np.ndarray:
    return np.load(path)


def random_windows(stream: np.ndarray, batch: int, length: int, seed: int, step: int) -> np.ndarray:
    """[batch, length] windows at random offsets; a pure function of (seed, step), so resume is exact."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - length, size=batch)
    return np.stack([stream[s : s + length] for s in starts]).astype(np.int64)


def fixed_windows(stream: np.ndarray, length: int, max_windows: int | None = None) -> np.ndarray:
    """[n, length] non-overlapping windows from the start (evaluation)."""
    n = (len(stream) - 1) // length
    if max_windows is not None:
        n = min(n, max_windows)
    return np.stack([stream[i * length : i * length + length] for i in range(n)]).astype(np.int64)
