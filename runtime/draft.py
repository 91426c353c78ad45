"""The draft side of a round: the `expand(tree, rows)` callback the policies call (docs/design.md §3).

EAGLE-3 round structure (docs/engine-format.md): after the target has committed P tokens, the
draft has committed rows for positions [0, P - a) and holds a pending feed of a rows — the target
feature rows of the tokens accepted last round, each paired with the *next* token. `expand(tree,
[0])` runs that feed through draft_fc + draft (appended permanently: the draft then has P rows); the
last row gives the root's children and its `hidden_out`. Deeper calls feed each node as (its token,
its parent's `hidden_out`) at position P + depth - 1, writing scratch rows at slots [P, P + s).
A round that makes no draft call (its tree came from elsewhere) defers its feed: `defer_feed` runs
draft_fc over it while the target's features are there and keeps the hidden rows, which go first in
the next feed's draft call.

Scratch bookkeeping, all preallocated:
- `slot_of[node]`: the node's scratch slot (root: the sentinel `cap`, which is no scratch row);
- `anc[slot, :]`: the scratch slots a node at `slot` attends to (its expanded ancestors and itself);
  the sentinel row is all False (the root's row is committed, everyone sees it);
- `hid[slot]`: the node's `hidden_out`, the hidden input of its children.
"""

from __future__ import annotations

import time

import numpy as np

from talon_rt.runtime.backends.base import Backend


class Drafter:
    def __init__(self, backend: Backend, hidden_size: int, dtype: type, scratch_cap: int, chunk: int):
        self.backend = backend
        self.cap = scratch_cap
        self.chunk = chunk
        self.anc = np.zeros((scratch_cap + 1, scratch_cap), np.bool_)
        self.hid = np.zeros((scratch_cap + 1, hidden_size), dtype)
        self.slot_of = np.full(max(scratch_cap, 1) + 1, scratch_cap, np.int64)
        self.causal = np.tril(np.ones((chunk, chunk), np.bool_))
        self.committed = 0      # draft rows committed: positions [0, committed)
        self.scratch = 0        # scratch rows in use this round
        self.past = 0           # target length P of this round (scratch starts there)
        self.feed_rows = np.zeros(0, np.int64)      # rows of the last target call's features
        self.feed_tokens = np.zeros(0, np.int64)    # token paired with each feature row
        self.deferred = 0                           # feed rows deferred by rounds without a draft call
        self.deferred_tokens = np.zeros(chunk, np.int64)   # their tokens (their features: the backend keeps them)
        self.calls = 0
        self.engine_ns = 0

    # -- between rounds --------------------------------------------------------------------------

    def set_feed(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """The next first call: feature rows `rows` of the last target call paired with `tokens`."""
        self.feed_rows = rows
        self.feed_tokens = tokens

    def run_feed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append the deferred rows and the pending feed to the draft cache (in chunks); return the
        last row's outputs."""
        n = len(self.feed_rows)
        assert n > 0, "draft feed is empty"
        out, start = None, 0
        if self.deferred:
            d, start = self.deferred, min(n, self.chunk - self.deferred)
            t0 = time.perf_counter_ns()
            hidden = self.backend.draft_fc(self.feed_rows[:start], kept=d)   # the kept rows' fc, then these
            self.engine_ns += time.perf_counter_ns() - t0
            self.deferred_tokens[d:d + start] = self.feed_tokens[:start]
            out = self._append(self.deferred_tokens[:d + start], hidden)
            self.deferred = 0
        for s in range(start, n, self.chunk):
            rows, toks = self.feed_rows[s:s + self.chunk], self.feed_tokens[s:s + self.chunk]
            t0 = time.perf_counter_ns()
            hidden = self.backend.draft_fc(rows)
            self.engine_ns += time.perf_counter_ns() - t0
            out = self._append(toks, hidden)
        self.feed_rows = self.feed_rows[:0]
        assert out is not None
        return out

    def defer_feed(self) -> None:
        """Keep the pending feed's feature rows for the next feed's call (a round without a draft call:
        no fc now, one fc over all of them then); run it now instead when the rows would overflow one
        call."""
        n, d = len(self.feed_rows), self.deferred
        if d + n > self.chunk:
            self.run_feed()
            return
        t0 = time.perf_counter_ns()
        self.backend.keep_features(self.feed_rows, d)
        self.engine_ns += time.perf_counter_ns() - t0
        self.deferred_tokens[d:d + n] = self.feed_tokens
        self.deferred = d + n
        self.feed_rows = self.feed_rows[:0]

    def _append(self, tokens: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One draft call appending q rows (hidden [q, H], draft_fc's output) after the committed ones."""
        q = len(tokens)
        pos = np.arange(self.committed, self.committed + q, dtype=np.int64)
        t0 = time.perf_counter_ns()
        out = self.backend.draft(tokens, hidden, pos, self.causal[:q, :q], self.committed)
        self.engine_ns += time.perf_counter_ns() - t0
        self.calls += 1
        self.committed += q
        return out

    def start_round(self, past_len: int) -> None:
        self.past = past_len
        self.scratch = 0

    # -- the policy callback -----------------------------------------------------------------------

    def expand(self, tree, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One draft call for nodes `rows` of the tree so far: each node's top-k children."""
        if rows.shape[0] == 1 and rows[0] == 0:
            ids, logp, hidden_out = self.run_feed()
            self.hid[self.cap] = hidden_out[-1]
            self._ensure_nodes(tree.size)
            self.slot_of[0] = self.cap
            return ids[-1:], logp[-1:]
        q, s0 = rows.shape[0], self.scratch
        if s0 + q > self.cap:
            raise RuntimeError(f"draft scratch overflow: {s0 + q} rows > capacity {self.cap}")
        self._ensure_nodes(tree.size)
        parent_slot = self.slot_of[tree.parents[rows]]            # [q]
        new = slice(s0, s0 + q)                                    # this call's scratch slots
        self.slot_of[rows] = np.arange(s0, s0 + q)
        self.anc[new] = self.anc[parent_slot]                      # inherit the ancestors' rows
        np.fill_diagonal(self.anc[new, new], True)                 # and see itself
        positions = tree.depth[rows] + (self.past - 1)
        t0 = time.perf_counter_ns()
        ids, logp, hidden_out = self.backend.draft(tree.tokens[rows], self.hid[parent_slot], positions,
                                                   self.anc[new, :s0 + q], self.past + s0)
        self.engine_ns += time.perf_counter_ns() - t0
        self.calls += 1
        self.hid[new] = hidden_out
        self.scratch = s0 + q
        return ids, logp

    def _ensure_nodes(self, n: int) -> None:
        # node indices during a build can exceed the final tree size (eagle3 reranks at the end)
        if n > self.slot_of.shape[0]:
            grown = np.full(max(n, 2 * self.slot_of.shape[0]), self.cap, np.int64)
            grown[:self.slot_of.shape[0]] = self.slot_of
            self.slot_of = grown
