"""The draft tree: flat node arrays, parents before children, and the tensors the target needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BuildInfo:
    """What one `build` did (for round stats; the cost model's delta is `draft_calls`)."""

    draft_calls: int
    nodes_per_layer: tuple[int, ...]  # final tree nodes at depth 1, 2, ... (root excluded)
    drafted: int  # draft nodes scored during the build, kept or not
    pool_truncated: int = 0  # talon: parents whose k children all passed the gate (pool cut by k)
    lookup: tuple[int, ...] = ()  # the nodes the context lookup proposed (head duplicates included)

    @property
    def layers(self) -> int:
        return len(self.nodes_per_layer)


@dataclass(frozen=True)
class DraftTree:
    """n nodes; node 0 is the root (the last committed token); parents[i] < i for i > 0."""

    tokens: np.ndarray  # int64 [n]
    parents: np.ndarray  # int64 [n], parents[0] == -1
    depth: np.ndarray  # int64 [n], depth[0] == 0
    logp: np.ndarray  # float64 [n]: cumulative draft log-prob of the path, logp[0] == 0
    info: BuildInfo | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def validate(self) -> DraftTree:
        """Raise ValueError unless the arrays form a tree in parents-before-children order."""
        n = self.size
        for name in ("tokens", "parents", "depth", "logp"):
            a = getattr(self, name)
            if a.ndim != 1 or a.shape[0] != n:
                raise ValueError(f"DraftTree.{name}: expected shape ({n},), got {a.shape}")
        if n == 0:
            raise ValueError("DraftTree: needs at least the root node")
        if self.parents[0] != -1 or self.depth[0] != 0:
            raise ValueError(f"DraftTree: root must have parent -1 and depth 0, got "
                             f"parent {self.parents[0]}, depth {self.depth[0]}")
        idx = np.arange(1, n)
        bad = np.flatnonzero((self.parents[1:] < 0) | (self.parents[1:] >= idx))
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(f"DraftTree.parents: node {i} has parent {self.parents[i]}, "
                             f"which does not precede it")
        bad = np.flatnonzero(self.depth[1:] != self.depth[self.parents[1:]] + 1)
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(f"DraftTree.depth: node {i} has depth {self.depth[i]}, "
                             f"parent depth {self.depth[self.parents[i]]}")
        return self

    def mask(self) -> np.ndarray:
        """bool [n, n]: mask[i, j] iff j is i or an ancestor of i."""
        n = self.size
        # pointer doubling: after step s, rows hold ancestors up to distance 2**s - 1;
        # row n is an all-False sentinel standing for "above the root".
        m = np.zeros((n + 1, n), dtype=bool)
        m[np.arange(n), np.arange(n)] = True
        jump = np.empty(n + 1, dtype=np.int64)
        jump[:n] = self.parents
        jump[0] = n
        jump[n] = n
        reach = 1
        max_depth = int(self.depth.max())
        while reach <= max_depth:
            m[:n] |= m[jump[:n]]
            jump = jump[jump]
            reach *= 2
        return m[:n]

    def positions(self, past_len: int) -> np.ndarray:
        """int64 [n]: position ids, past_len + depth."""
        return self.depth.astype(np.int64) + past_len

    def paths(self) -> list[np.ndarray]:
        """Root-to-leaf node-index paths (int64 arrays), leaves in index order."""
        n = self.size
        is_parent = np.zeros(n, dtype=bool)
        is_parent[self.parents[1:]] = True
        m = self.mask()
        # ancestors in index order are in depth order, because parents precede children
        return [np.flatnonzero(m[leaf]) for leaf in np.flatnonzero(~is_parent)]


def root_tree(root_token: int, info: BuildInfo | None = None) -> DraftTree:
    """The one-node tree of the AR baseline."""
    return DraftTree(tokens=np.array([root_token], dtype=np.int64),
                     parents=np.array([-1], dtype=np.int64),
                     depth=np.zeros(1, dtype=np.int64),
                     logp=np.zeros(1, dtype=np.float64), info=info)
