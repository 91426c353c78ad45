"""Target-side sampling: logits -> probabilities (temperature, top-k, top-p, min-p), and one categorical draw."""

from __future__ import annotations

import numpy as np


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0, min_p: float = 0.0) -> np.ndarray:
    """float64 [..., V] probabilities; applied in Hugging Face order: temperature, top-k, top-p, min-p.

    top_k=0, top_p=1.0 and min_p=0.0 switch those filters off. min-p keeps the tokens whose
    probability is at least min_p times the most likely token's. Greedy decoding (temperature 0)
    takes the argmax of the logits instead and never calls this.
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    x = np.asarray(logits, dtype=np.float64) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = np.partition(x, v - top_k, axis=-1)[..., v - top_k, None]
        x = np.where(x < kth, -np.inf, x)  # ties with the k-th logit stay, as in HF
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        rows = p.reshape(-1, v)
        for r in range(rows.shape[0]):
            rows[r] = _nucleus(rows[r], top_p)
        p /= p.sum(axis=-1, keepdims=True)
    if min_p > 0.0:
        p = np.where(p < min_p * p.max(axis=-1, keepdims=True), 0.0, p)   # the most likely token stays
        p /= p.sum(axis=-1, keepdims=True)
    return p


FIRST_CANDIDATES = 64  # tokens ranked first; grown 8x while the nucleus reaches past them


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """p [V] with every token zeroed whose probability mass ranked strictly above it (descending,
    ties by index) is >= top_p: the token that crosses top_p stays, and so does the best one.

    Only the candidates, the tokens at least as likely as the m-th most likely one, are sorted: when
    the last candidate is dropped, every other token ranks after it and is dropped too; m grows
    until that holds or every token is a candidate. The kept values and their cumulative sums are
    those of a full sort (same elements, same order)."""
    v = p.shape[0]
    m = min(FIRST_CANDIDATES, v)
    while True:
        cand = np.flatnonzero(p >= np.partition(p, v - m)[v - m])  # ascending index: the stable tie order
        values = p[cand]
        order = np.argsort(-values, kind="stable")
        ranked = values[order]
        before = np.cumsum(ranked) - ranked
        if before[-1] >= top_p or len(cand) == v:
            keep = before < top_p
            keep[0] = True
            out = np.zeros_like(p)
            out[cand[order[keep]]] = ranked[keep]
            return out
        m = min(8 * m, v)


def sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from probs [V] (need not be normalised; must have positive mass)."""
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, cdf.shape[0] - 1)
