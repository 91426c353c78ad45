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
    p = np.divide(logits, temperature, dtype=np.float64)   # one [..., V] buffer, filtered in place
    v = p.shape[-1]
    if 0 < top_k < v:
        kth = np.partition(p, v - top_k, axis=-1)[..., v - top_k, None]
        p[p < kth] = -np.inf   # ties with the k-th logit stay, as in HF
    p -= p.max(axis=-1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        for row in p.reshape(-1, v):
            _nucleus(row, top_p)
        p /= p.sum(axis=-1, keepdims=True)
    if min_p > 0.0:
        p[p < min_p * p.max(axis=-1, keepdims=True)] = 0.0   # the most likely token stays
        p /= p.sum(axis=-1, keepdims=True)
    return p


FIRST_CANDIDATES = 64  # tokens ranked first; grown 8x (or to what the missing mass needs) while the nucleus reaches past them
GROWTH = 8
SUM_SLACK = 2.0 ** -52  # one ulp of a cumulative sum below 2: what the mass before a later token can lose to rounding


def _nucleus(p: np.ndarray, top_p: float) -> None:
    """Zero in place every token of p [V] (normalised) whose probability mass ranked strictly above it
    (descending, ties by index, summed in that order) is >= top_p: the token that crosses top_p stays,
    and so does the best one.

    Only the m largest values are sorted (values, not indices: the sums depend on the values alone).
    Once their cumulative sum c exceeds top_p by SUM_SLACK, every later token's mass before it is
    >= c - SUM_SLACK >= top_p and it is dropped; otherwise m grows. The kept tokens are then those
    above the last kept value t, and the first (by index) of those equal to t: the set of a full sort.
    """
    v = p.shape[0]
    m = min(FIRST_CANDIDATES, v)
    while True:
        top = np.partition(p, v - m)[v - m:] if m < v else p
        ranked = np.sort(top)[::-1]          # [m] the m largest values, descending
        cum = np.cumsum(ranked)              # sequential: the prefix of the full sort's sums
        if m == v or cum[-1] - top_p >= SUM_SLACK:
            break
        short = min((top_p - cum[-1]) / ranked[-1], v) if ranked[-1] > 0.0 else v   # tokens still needed, at least
        m = min(max(GROWTH * m, m + int(short) + 1), v)
        if 2 * m > v:
            m = v
    keep = cum - ranked < top_p
    keep[0] = True
    k = int(np.count_nonzero(keep))
    if not keep[:k].all():   # the mass before is not monotone (rounding): rank every token
        order = np.argsort(-p, kind="stable")
        ranked = p[order]
        drop = np.cumsum(ranked) - ranked >= top_p
        drop[0] = False
        p[order[drop]] = 0.0
        return
    t = ranked[k - 1]
    p[p < t] = 0.0
    if k == m or ranked[k] == t:   # ties with t may reach past the kept ones
        ties = np.flatnonzero(p == t)
        p[ties[k - int(np.count_nonzero(ranked[:k] > t)):]] = 0.0


def sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from probs [V] (need not be normalised; must have positive mass)."""
    nonzero = int(np.count_nonzero(probs))
    if 0 < 2 * nonzero < probs.shape[0]:
        # a filtered row: a zero adds nothing to the cdf, so the nonzero tokens' cdf holds the same
        # values and the first one above the draw is the same token
        ids = np.flatnonzero(probs)
        cdf = np.cumsum(probs[ids])
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(ids[i]) if i < ids.shape[0] else probs.shape[0] - 1
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, cdf.shape[0] - 1)
