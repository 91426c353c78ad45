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
    x = np.asarray(logits)
    v = x.shape[-1]
    p = np.empty(x.shape, np.float64)   # [..., V]
    scratch = np.empty((2, v))           # [2, V] partitioned / sorted values, their cumulative sums
    for row, logit_row in zip(p.reshape(-1, v), x.reshape(-1, v)):   # a row at a time: it stays in cache
        np.divide(logit_row, temperature, out=row, dtype=np.float64)
        _filter_row(row, top_p, top_k, min_p, scratch)
    return p


def _filter_row(p: np.ndarray, top_p: float, top_k: int, min_p: float, scratch: np.ndarray) -> None:
    """Tempered logits [V] -> probabilities, in place: top-k, softmax, top-p, min-p."""
    v = p.shape[0]
    if 0 < top_k < v:
        scratch[0, :v] = p
        scratch[0, :v].partition(v - top_k)
        kept = np.flatnonzero(p >= scratch[0, v - top_k])   # ties with the k-th logit stay, as in HF
        x = p[kept]
        x -= x.max()
        np.exp(x, out=x)
        p[:] = 0.0   # exp(-inf) for the rest, without exp's slow path for it
        p[kept] = x
    else:
        p -= p.max()
        np.exp(p, out=p)
    p /= p.sum()
    if top_p < 1.0:
        _nucleus(p, top_p, scratch)
        p /= p.sum()
    if min_p > 0.0:
        np.putmask(p, p < min_p * p.max(), 0.0)   # the most likely token stays
        p /= p.sum()


FIRST_CANDIDATES = 1024  # tokens ranked first (sorting 1024 values costs little next to the partition)
GROWTH = 8               # then 8x, or what the missing mass needs at least, while the nucleus reaches past them
SUM_SLACK = 2.0 ** -52  # one ulp of a cumulative sum below 2: what the mass before a later token can lose to rounding


def _nucleus(p: np.ndarray, top_p: float, scratch: np.ndarray) -> None:
    """Zero in place every token of p [V] (normalised) whose probability mass ranked strictly above it
    (descending, ties by index, summed in that order) is >= top_p: the token that crosses top_p stays,
    and so does the best one. scratch: float64 [2, >= V], overwritten.

    Only the m largest values are sorted (values, not indices: the sums depend on the values alone).
    Once their cumulative sum c exceeds top_p by SUM_SLACK, every later token's mass before it is
    >= c - SUM_SLACK >= top_p and it is dropped; otherwise m grows. The kept tokens are then those
    above the last kept value t, and the first (by index) of those equal to t: the set of a full sort.
    """
    v = p.shape[0]
    nonzero = p != 0.0
    if 2 * np.count_nonzero(nonzero) < v:   # zeros rank last and add nothing: filter the rest alone
        ids = np.flatnonzero(nonzero)
        rest = p[ids]
        _nucleus(rest, top_p, scratch)
        p[ids] = rest
        return
    values = scratch[0, :v]
    values[:] = p
    done, m = 0, min(FIRST_CANDIDATES, v)
    while True:
        if m < v:
            values[:v - done].partition(v - m)     # the next m - done largest values to [v-m, v-done)
        values[v - m:v - done].sort()              # values[v-m:] ascending: those below the sorted ones
        ranked = values[v - m:][::-1]                  # [m] the m largest values, descending
        cum = np.cumsum(ranked, out=scratch[1, :m])    # sequential: the prefix of the full sort's sums
        if m == v or cum[-1] - top_p >= SUM_SLACK:
            break
        short = min((top_p - cum[-1]) / ranked[-1], v) if ranked[-1] > 0.0 else v   # tokens still needed, at least
        done, m = m, min(max(GROWTH * m, m + int(short) + 1), v)
        if 2 * m > v:
            if _nucleus_from_the_tail(p, top_p, scratch):   # most tokens stay: rank the dropped ones instead
                return
            values[:] = p
            done, m = 0, v
    cum -= ranked                                      # mass ranked strictly above each
    keep = cum < top_p
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
    np.putmask(p, p < t, 0.0)
    if k == m or ranked[k] == t:   # ties with t may reach past the kept ones
        ties = np.flatnonzero(p == t)
        p[ties[k - int(np.count_nonzero(ranked[:k] > t)):]] = 0.0


TAIL_CANDIDATES = 4096   # the smallest values ranked first when most of the row stays in the nucleus


def _nucleus_from_the_tail(p: np.ndarray, top_p: float, scratch: np.ndarray) -> bool:
    """`_nucleus` for a row whose nucleus holds most of it, ranking only the L smallest values; False
    (p untouched) where it cannot decide exactly, and the caller ranks every token.

    The mass ranked above the token at descending rank j is, up to rounding, the total T less the
    suffix sum from j down (summed upwards over the L smallest values, ascending). Both that estimate
    and the full sort's sequential sum are within n * 2^-53 * T of the exact value (recursive summation
    of nonnegative terms), so a token whose estimate lies farther than twice that from top_p is
    kept or dropped as the full sort decides; a token within it sends the row to the full sort.
    """
    v = p.shape[0]
    total = float(p.sum())
    margin = 4.0 * v * 2.0 ** -53 * max(total, 1.0)
    values = scratch[0, :v]
    L = min(TAIL_CANDIDATES, v)
    while True:
        values[:] = p
        if L < v:
            values.partition(L - 1)                     # the L smallest values to [0, L)
        tail = values[:L]
        tail.sort()                                     # ascending: descending ranks v-1, v-2, ... v-L
        suffix = np.cumsum(tail, out=scratch[1, :L])    # suffix[i]: mass of the i+1 smallest values
        if total - suffix[-1] < top_p - margin:         # the token above the tail stays: the cut lies within
            break
        if 4 * L > v:
            return False
        L *= 4
    before = total - suffix                             # mass ranked above each tail token (ascending order)
    drop = before >= top_p + margin
    unsure = ~drop & (before >= top_p - margin)
    if unsure.any():
        return False
    dropped = int(np.count_nonzero(drop))               # the `dropped` smallest (a prefix of the ascending tail)
    if dropped == 0:
        return True
    if dropped >= v:                                    # the best token always stays
        dropped = v - 1
    t = tail[dropped - 1]                               # the largest dropped value
    below = int(np.count_nonzero(tail[:dropped] < t))
    np.putmask(p, p < t, 0.0)
    ties = np.flatnonzero(p == t)                       # ties rank by index: the highest ids go first
    p[ties[ties.shape[0] - (dropped - below):]] = 0.0
    return True


def sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from probs [V] (need not be normalised; must have positive mass)."""
    nonzero = probs != 0.0
    if 0 < 2 * np.count_nonzero(nonzero) < probs.shape[0]:
        # a filtered row: a zero adds nothing to the cdf, so the nonzero tokens' cdf holds the same
        # values and the first one above the draw is the same token
        ids = np.flatnonzero(nonzero)
        cdf = np.cumsum(probs[ids])
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(ids[i]) if i < ids.shape[0] else probs.shape[0] - 1
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, cdf.shape[0] - 1)
