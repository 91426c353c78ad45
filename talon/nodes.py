"""The node buffers a policy grows its tree in, and the checked draft call (docs/design.md §4)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from talon_rt.talon.tree import BuildInfo, DraftTree

Expand = Callable[[DraftTree, np.ndarray], tuple[np.ndarray, np.ndarray]]
ROOT = np.zeros(1, dtype=np.int64)   # the rows of the root's draft call


class Nodes:
    """Append-only node buffers; `tree()` views the nodes added so far without copying."""

    def __init__(self, capacity: int, root_token: int):
        self.tokens = np.empty(capacity, dtype=np.int64)
        self.parents = np.empty(capacity, dtype=np.int64)
        self.depth = np.empty(capacity, dtype=np.int64)
        self.logp = np.empty(capacity, dtype=np.float64)
        self.tokens[0], self.parents[0], self.depth[0], self.logp[0] = root_token, -1, 0, 0.0
        self.n = 1

    def tree(self, info: BuildInfo | None = None) -> DraftTree:
        n = self.n
        return DraftTree(self.tokens[:n], self.parents[:n], self.depth[:n], self.logp[:n], info)

    def add(self, parents: np.ndarray, tokens: np.ndarray, logp: np.ndarray,
            depth: int | np.ndarray) -> np.ndarray:
        """Append one layer (or nodes of any depths, parents first); return the new node indices."""
        a, b = self.n, self.n + tokens.shape[0]
        self.tokens[a:b], self.parents[a:b], self.logp[a:b] = tokens, parents, logp
        self.depth[a:b] = depth
        self.n = b
        return np.arange(a, b)

    def expand(self, expand: Expand, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One draft call for nodes `rows` of the tree so far: (ids, logp) [r, k], shapes checked."""
        ids, logp = expand(self.tree(), rows)
        if ids.ndim != 2 or ids.shape[0] != rows.shape[0] or logp.shape != ids.shape or ids.shape[1] < 1:
            raise ValueError(f"expand: expected ids and logp of shape ({rows.shape[0]}, k>=1), "
                             f"got {ids.shape} and {logp.shape}")
        return ids, logp

    def subtree(self, sel: np.ndarray, calls: int, drafted: int, truncated: int = 0) -> DraftTree:
        """The tree of nodes `sel` (ascending, the root first, closed under ancestors)."""
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[sel] = np.arange(sel.shape[0])
        parents = remap[self.parents[sel]]
        parents[0] = -1
        depth = self.depth[sel]
        info = BuildInfo(draft_calls=calls, nodes_per_layer=layer_counts(depth), drafted=drafted,
                         pool_truncated=truncated)
        return DraftTree(self.tokens[sel], parents, depth, self.logp[sel], info)


def layer_counts(depth: np.ndarray) -> tuple[int, ...]:
    """Nodes at depth 1, 2, ... of a tree with node depths `depth`."""
    return tuple(int(c) for c in np.bincount(depth)[1:])


def check_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
