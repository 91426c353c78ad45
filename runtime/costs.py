"""Measure an engine's cost model for the cost-aware TALON extension (`policy="talon-cost"`).

At open, the backend's own calls are timed on this machine: the target at a grid of tree sizes up
to the budget (the verify-cost curve) and the draft at 1 row and at the root's fan-out. Calls run at
past_len 0 on scratch rows, before any prompt, so nothing of a generation is touched (the prefill
writes every cache row it reads). A few hundred milliseconds for the demo engine.
"""

from __future__ import annotations

import time

import numpy as np

from talon_rt.runtime.backends.base import Backend
from talon_rt.runtime.manifest import Manifest
from talon_rt.talon import CostModel

# Host work per drawn layer besides the draft call itself (policy step, scratch bookkeeping,
# mask): `python -m talon_rt.runtime.profile` on the demo engine shows build_host ~40 us for a one-call
# tree and ~100 us with one deeper layer.
HOST_PER_LAYER_US = 50.0
GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def medians_us(calls: dict, reps: int, warmup: int = 2, passes: int = 2) -> dict:
    """Per call of `calls` ({key: fn}): the median us of `reps` back-to-back calls (a round's calls of
    one kind follow each other with warm caches), the lowest over `passes` passes (drift, spikes)."""
    best: dict = {}
    for _ in range(passes):
        for k, fn in calls.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter_ns()
                fn()
                times.append(time.perf_counter_ns() - t0)
            best[k] = min(best.get(k, np.inf), float(np.median(times)) / 1e3)
    return best


def _call(fn, *args):
    return lambda: fn(*args)


def measure_cost_model(backend: Backend, m: Manifest, budget: int, fan_out: int, greedy: bool,
                       reps: int = 5) -> CostModel:
    """The cost model of trees up to `budget` nodes whose deeper layers draft up to `fan_out` rows."""
    rng = np.random.default_rng(0)
    V, H = m.model.vocab_size, m.draft.hidden_size
    target = backend.target_argmax if greedy else backend.target
    calls = {}
    for q in sorted({q for q in GRID if q <= budget} | {budget}):
        calls[("target", q)] = _call(target, rng.integers(0, V, q), np.arange(q),
                                     np.tril(np.ones((q, q), np.bool_)), 0)
    for r in sorted({1, max(1, min(fan_out, budget - 1))}):
        calls[("draft", r)] = _call(backend.draft, rng.integers(0, V, r), np.zeros((r, H), m.kv_dtype),
                                    np.zeros(r, np.int64), np.eye(r, dtype=np.bool_), 0)
    us = medians_us(calls, reps)
    verify = {q: t for (kind, q), t in us.items() if kind == "target"}
    draft = {r: t for (kind, r), t in us.items() if kind == "draft"}
    rows = sorted(draft)
    row_cost = (draft[rows[-1]] - draft[rows[0]]) / (rows[-1] - rows[0]) if len(rows) > 1 else 0.0
    base = draft[1] - row_cost + HOST_PER_LAYER_US
    return CostModel.from_points(verify, budget, draft_base=max(base, 0.0), draft_row=max(row_cost, 0.0))
