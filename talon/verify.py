"""Verification of a draft tree against one target call: greedy and lossless sampling (docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talon_rt.talon.sampling import sample_token
from talon_rt.talon.tree import DraftTree


@dataclass(frozen=True)
class Acceptance:
    """The accepted path and what the round emits."""

    nodes: np.ndarray  # int64 [a+1]: accepted node indices along one path, root (0) first
    tokens: np.ndarray  # int64 [a+1]: the a accepted draft tokens, then the bonus/correction token

    @property
    def accepted(self) -> int:
        """Accepted draft tokens (the root is committed already and not counted)."""
        return int(self.nodes.shape[0]) - 1

    @property
    def bonus(self) -> int:
        return int(self.tokens[-1])


def _path_to(tree: DraftTree, node: int) -> np.ndarray:
    path = [node]
    while node > 0:
        node = int(tree.parents[node])
        path.append(node)
    return np.array(path[::-1], dtype=np.int64)


def _check_rows(tree: DraftTree, name: str, a: np.ndarray, ndim: int) -> None:
    if a.ndim != ndim or a.shape[0] != tree.size:
        raise ValueError(f"{name}: expected {ndim}-D with {tree.size} rows (one per tree node), "
                         f"got shape {a.shape}")


SMALL_TREE = 32   # up to this many nodes a walk in Python beats the vectorised pointer doubling


def _verify_greedy_small(tree: DraftTree, target_argmax: np.ndarray) -> Acceptance:
    """verify_greedy by one pass in node order (parents precede children)."""
    parents, tokens, depth = tree.parents.tolist(), tree.tokens.tolist(), tree.depth.tolist()
    argmax = target_argmax.tolist()
    good = [True] * len(parents)
    last = 0
    for i in range(1, len(parents)):
        p = parents[i]
        good[i] = good[p] and tokens[i] == argmax[p]
        if good[i] and depth[i] > depth[last]:   # the first deepest accepted node, as np.argmax
            last = i
    path = [last]
    while path[-1] > 0:
        path.append(parents[path[-1]])
    path.reverse()
    out = [tokens[i] for i in path[1:]]
    out.append(argmax[last])
    return Acceptance(nodes=np.array(path, dtype=np.int64), tokens=np.array(out, dtype=np.int64))


def verify_greedy(tree: DraftTree, target_argmax: np.ndarray) -> Acceptance:
    """target_argmax int [n]: the target's argmax after each node. Follows the longest accepted path."""
    _check_rows(tree, "target_argmax", target_argmax, 1)
    n = tree.size
    if n <= SMALL_TREE:
        return _verify_greedy_small(tree, target_argmax)
    good = np.empty(n + 1, dtype=bool)
    good[:n] = tree.tokens == target_argmax[tree.parents]  # node matches its parent's argmax
    good[0] = good[n] = True
    # pointer doubling: good[i] becomes "i and all its ancestors match"; index n is above the root
    jump = np.empty(n + 1, dtype=np.int64)
    jump[:n], jump[0], jump[n] = tree.parents, n, n
    reach, max_depth = 1, int(tree.depth.max())
    while reach <= max_depth:
        good[:n] &= good[jump[:n]]
        jump = jump[jump]
        reach *= 2
    last = int(np.argmax(np.where(good[:n], tree.depth, -1)))
    nodes = _path_to(tree, last)
    tokens = np.append(tree.tokens[nodes[1:]], target_argmax[last]).astype(np.int64)
    return Acceptance(nodes=nodes, tokens=tokens)


def verify_sample(tree: DraftTree, target_probs: np.ndarray, rng: np.random.Generator) -> Acceptance:
    """Lossless multi-draft rejection sampling with point-mass drafts.

    target_probs [n, V]: the target's processed next-token distribution after each node. At each node
    the distinct children are tried in tree order: child x is accepted with probability p(x); on
    rejection p(x) is set to 0 and p renormalised. If all are rejected the correction is drawn from
    what is left of p; at a leaf the bonus is drawn from p. Emitted tokens then follow the target.
    """
    _check_rows(tree, "target_probs", target_probs, 2)
    n = tree.size
    kids = np.argsort(tree.parents[1:], kind="stable") + 1  # children grouped by parent, tree order
    start = np.searchsorted(tree.parents[kids], np.arange(n + 1))
    node, path = 0, [0]
    while True:
        lo, hi = start[node], start[node + 1]
        if lo == hi:
            last = sample_token(target_probs[node], rng)
            break
        p = target_probs[node]
        total = float(p.sum(dtype=np.float64))
        rejected: list[int] = []
        nxt = -1
        for child in kids[lo:hi]:
            x = int(tree.tokens[child])
            px = float(p[x])
            if px <= 0.0 or x in rejected:
                continue  # rejected for sure: zero probability, or a duplicate of a rejected token
            if px >= total or rng.random() * total < px:
                nxt = int(child)
                break
            rejected.append(x)
            total -= px  # p(x) = 0, renormalised implicitly by dividing by the new total
        if nxt < 0:
            residual = np.array(p, dtype=np.float64)
            residual[rejected] = 0.0
            last = sample_token(residual if residual.sum() > 0.0 else p, rng)
            break
        node = nxt
        path.append(node)
    nodes = np.array(path, dtype=np.int64)
    return Acceptance(nodes=nodes, tokens=np.append(tree.tokens[nodes[1:]], last).astype(np.int64))
