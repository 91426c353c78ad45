"""Synthetic drafts for tests and the micro-benchmark: `expand` functions with no model behind them."""

from __future__ import annotations

import numpy as np

from talon_rt.talon.tree import DraftTree

_MIX = np.array([7919, 104729, 31], dtype=np.int64)  # hash multipliers for (token, parent token, depth)


class SyntheticDraft:
    """A draft whose next-token distribution is a fixed random function of the context.

    The context of a node is (its token, its parent's token, its depth), hashed into `contexts`
    random log-softmax rows: logits = sharpness * N(0, 1), plus `peak` on one token per row.
    peak >> 1 gives a near-deterministic draft; sharpness ~ 0 and peak 0 a flat one.
    """

    def __init__(self, vocab: int, k: int, seed: int = 0, sharpness: float = 1.0, peak: float = 0.0,
                 contexts: int = 251):
        if k > vocab:
            raise ValueError(f"k must be <= vocab ({vocab}), got {k}")
        rng = np.random.default_rng(seed)
        logits = sharpness * rng.standard_normal((contexts, vocab))
        logits[np.arange(contexts), rng.integers(0, vocab, contexts)] += peak
        logits -= logits.max(axis=1, keepdims=True)
        self.logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # [contexts, vocab]
        order = np.argsort(-self.logp, axis=1, kind="stable")[:, :k]
        self.top_ids = order.astype(np.int64)  # [contexts, k] descending by log-prob
        self.top_logp = np.take_along_axis(self.logp, order, axis=1)
        self.calls: list[int] = []  # rows per expand call

    def context(self, token: int, parent_token: int, depth: int) -> int:
        return int((token * _MIX[0] + parent_token * _MIX[1] + depth * _MIX[2]) % self.logp.shape[0])

    def children(self, path: list[int]) -> list[tuple[int, float]]:
        """All vocab tokens after the root-to-node token path, as (token, logp), best first."""
        c = self.context(path[-1], path[-2] if len(path) > 1 else path[-1], len(path) - 1)
        lp = self.logp[c]
        return [(t, float(lp[t])) for t in sorted(range(lp.shape[0]), key=lambda t: -lp[t])]

    def __call__(self, tree: DraftTree, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rows.shape[0] == 0:
            raise ValueError("expand called with no rows")
        if rows.min() < 0 or rows.max() >= tree.size:
            raise ValueError(f"expand rows out of range for a tree of {tree.size} nodes: {rows}")
        self.calls.append(int(rows.shape[0]))
        parent_tok = tree.tokens[np.maximum(tree.parents[rows], 0)]
        c = (tree.tokens[rows] * _MIX[0] + parent_tok * _MIX[1] + tree.depth[rows] * _MIX[2])
        c %= self.logp.shape[0]
        return self.top_ids[c], self.top_logp[c]


class CannedExpand:
    """An expand of ~zero cost: slices of pre-generated random top-k outputs (for timing hosts)."""

    def __init__(self, vocab: int = 32000, k: int = 10, rows: int = 4096, seed: int = 0,
                 shape: str = "mixed"):
        if shape not in ("mixed", "peaked", "flat"):
            raise ValueError(f"shape must be mixed, peaked or flat, got {shape!r}")
        rng = np.random.default_rng(seed)
        # mixed: rows of several sharpnesses, as a real draft gives; peaked: top-1 ~ 0.9999
        scale = {"mixed": rng.choice([0.5, 2.0, 5.0], size=(rows, 1)), "peaked": 0.5, "flat": 0.01}[shape]
        logits = rng.standard_normal((rows, 64)) * scale
        if shape == "peaked":
            logits[:, 0] += 14.0
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        self.logp = -np.sort(-lp, axis=1)[:, :k]
        self.ids = rng.integers(0, vocab, size=(rows, k), dtype=np.int64)
        self.at = 0

    def __call__(self, tree: DraftTree, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = rows.shape[0]
        if self.at + r > self.ids.shape[0]:
            self.at = 0
        a = self.at
        self.at += r
        return self.ids[a:a + r], self.logp[a:a + r]
