"""Target-side sampling: logits -> probabilities (temperature, top-k, top-p), and one categorical draw."""

from __future__ import annotations

import numpy as np


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0) -> np.ndarray:
    """float64 [..., V] probabilities; applied in Hugging Face order: temperature, top-k, top-p.

    top_k=0 and top_p=1.0 switch those filters off. Greedy decoding (temperature 0) takes the argmax
    of the logits instead and never calls this.
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    x = np.asarray(logits, dtype=np.float64) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = np.partition(x, v - top_k, axis=-1)[..., v - top_k, None]
        x = np.where(x < kth, -np.inf, x)  # ties with the k-th logit stay, as in HF
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(ranked, axis=-1) - ranked  # mass ranked strictly above each token
        drop = before >= top_p  # the token that crosses top_p stays, and so does the best one
        drop[..., 0] = False
        p = np.empty_like(p)
        np.put_along_axis(p, order, np.where(drop, 0.0, ranked), axis=-1)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from probs [V] (need not be normalised; must have positive mass)."""
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, cdf.shape[0] - 1)
