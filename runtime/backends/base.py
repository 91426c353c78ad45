"""The engine backend interface: the three graphs of an engine with their KV caches.

A backend owns every buffer (allocated once, at maximum shapes) and both KV caches
`[1, kvh, S, hd]` per layer. The decode loop passes small host arrays and gets host views back;
views stay valid until the next call of the same graph.

KV bookkeeping (docs/engine-format.md): a graph returns the q new K/V rows of a call (flavour
"standard") or writes them at [P, P+q) of the cache itself (flavour "gqa").
- target: `target()` / `target_argmax()` leave them there; `commit_target(P, rows)` puts rows `rows`
  (the accepted path, in order) at cache rows `[P, P+len(rows))` — a gather of O(len(rows)), no
  O(P) copy; rows past P+len(rows) are stale and never read. Prefill commits all rows.
- draft: `draft()` writes its q new rows at `[past_len, past_len+q)` immediately; scratch rows of a
  round are dropped by starting the next round's first call at the committed length again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def check_call(q: int, past_len: int, q_max: int, S: int) -> None:
    """A call of q tokens after past_len cached rows must fit the buffers (and a plan's profile)."""
    if q > q_max or past_len + q > S:
        raise ValueError(f"call of q={q} at past_len={past_len} exceeds the buffers (q_max={q_max}, S={S})")


class Backend(ABC):
    name: str = "?"

    @abstractmethod
    def target(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        """One target call. ids, positions: [q] int64; mask: [q, q] bool. Returns logits [q, V] float32."""

    def target_argmax(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        """One target call for greedy verification. Returns the argmax [q] int64 of each row's logits
        (the first maximum). Backends read the graph's `argmax` output instead of the logits."""
        return np.argmax(self.target(ids, positions, mask, past_len), axis=-1)

    @abstractmethod
    def commit_target(self, past_len: int, rows: np.ndarray) -> None:
        """Write the last target call's K/V rows `rows` ([a] int) to cache rows [past_len, past_len+a)."""

    @abstractmethod
    def draft_fc(self, rows: np.ndarray, kept: int = 0) -> np.ndarray:
        """fc of `kept` feature rows kept by `keep_features` (at [0, kept)) followed by the last target
        call's feature rows `rows` ([n] int). Returns hidden [kept + n, H]."""

    @abstractmethod
    def keep_features(self, rows: np.ndarray, at: int) -> None:
        """Keep the last target call's feature rows `rows` as draft_fc input rows [at, at + n) for a later
        `draft_fc(..., kept)` (a round without a draft call defers its fc to the next one that drafts)."""

    @abstractmethod
    def draft(self, ids: np.ndarray, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray,
              past_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One draft call. ids, positions: [q]; hidden: [q, H]; mask: [q, T] over the last T keys.

        Writes the q new K/V rows at [past_len, past_len+q). Returns (topk_ids [q, k_max] int64,
        topk_logp [q, k_max] float32, hidden_out [q, H]).
        """

    def check_footprint(self, target_rows: int, draft_rows: int) -> None:
        """Raise OptionError when a round writing `target_rows` target rows and `draft_rows` draft scratch
        rows past P (decode.footprint) cannot run on this backend's fixed shapes (TensorRT's optimization
        profiles). Default: no check at open; every call is checked against the buffers (`check_call`)."""

    def buffer_ids(self) -> tuple[int, ...]:
        """Addresses of every preallocated buffer (a test checks they never change)."""
        return ()

    def close(self) -> None:
        """Release sessions and buffers; idempotent."""
