"""The target's log-probabilities of emitted tokens (OpenAI `logprobs` / `top_logprobs`).

Exact under speculation: a token's log-probability comes from the target call that verified it, at
the tree node whose child (or bonus) it is, which is the row `ar` computes for the same context. They
are the raw model's (log-softmax of the logits; no penalty, temperature or filter), as vLLM reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20              # OpenAI's bound on top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]   # the k most likely (token, logprob), most likely first


def token_logprobs(logits: np.ndarray, tokens: np.ndarray, k: int) -> list[TokenLogprob]:
    """logits [m, V] rows that emitted tokens [m]; k alternatives each (0 = none)."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    lp = x - (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))   # log-softmax [m, V]
    out = []
    for r, t in enumerate(np.asarray(tokens).tolist()):
        best: tuple[tuple[int, float], ...] = ()
        if k > 0:
            ids = np.argpartition(-lp[r], k - 1)[:k] if k < lp.shape[1] else np.arange(lp.shape[1])
            ids = ids[np.lexsort((ids, -lp[r, ids]))]     # most likely first, ties by id
            best = tuple((int(i), float(lp[r, i])) for i in ids)
        out.append(TokenLogprob(int(t), float(lp[r, t]), best))
    return out
