"""Cost-aware tree sizing: an extension beside the paper's budget-only TALON (off unless asked for).

TALON stops growing a tree only at its budget N. Where a target call over q tokens costs much more
than over one (a CPU: verify(16) ~ 2.6 x verify(1) on the demo engine), the deep and unlikely
nodes of a budget-sized tree cost more verify time than the tokens they are expected to add. With
a measured cost model the policy keeps a node only if its probability of being accepted pays for
the verify time it adds at the decoder's current rate R (tokens per unit of time):

    keep a node  iff  P(its path is accepted) >= R * slope      (slope: verify cost per extra node)
    draw a layer iff  the expected accepted tokens of some projection of the next 1..8 layers
                      (each frontier node growing a chain of best children) beats R * their draft
                      calls, counting only nodes that would be kept.

P(accepted) comes from an `AcceptanceModel` that the decode loop calibrates on every verified
round; R is the rate the decoder measured on its recent rounds. Kept nodes have a running-minimum
path probability above a threshold, so the tree is closed under ancestors. The budget stays a cap.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from talon_rt.talon.tree import DraftTree
from talon_rt.talon.verify import Acceptance


@dataclass(frozen=True)
class CostModel:
    """Measured engine cost of one round, in one time unit (microseconds by convention).

    verify[n - 1]: one target call over an n-node tree (n = 1 .. len(verify)); made non-decreasing
    by lowering any cost above a later one (timing noise is spikes, not dips).
    A draft call over r rows costs draft_base + draft_row * r (host work of a layer included).
    """

    verify: tuple[float, ...]
    draft_base: float
    draft_row: float = 0.0

    def __post_init__(self) -> None:
        v = tuple(float(x) for x in self.verify)
        if not v or not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"cost model: verify costs must be positive and finite, got {self.verify!r}")
        for name in ("draft_base", "draft_row"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
                raise ValueError(f"cost model: {name} must be a finite number >= 0, got {x!r}")
        object.__setattr__(self, "verify", tuple(np.minimum.accumulate(np.asarray(v)[::-1])[::-1].tolist()))

    @property
    def max_nodes(self) -> int:
        return len(self.verify)

    def draft_call(self, rows: int) -> float:
        return self.draft_base + self.draft_row * rows

    @property
    def slope(self) -> float:
        """Verify cost per extra tree node, averaged over the curve (its local slope is noisy)."""
        v = self.verify
        return (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else 0.0

    @classmethod
    def from_points(cls, points: dict[int, float], max_nodes: int, draft_base: float,
                    draft_row: float = 0.0) -> CostModel:
        """Verify costs measured at a few tree sizes, linearly interpolated to 1..max_nodes
        (extrapolated from the last two points past the largest measured size)."""
        qs = np.array(sorted(points), dtype=np.float64)
        us = np.array([points[int(q)] for q in qs], dtype=np.float64)
        n = np.arange(1, max_nodes + 1, dtype=np.float64)
        v = np.interp(n, qs, us)
        if qs.shape[0] >= 2 and max_nodes > qs[-1]:
            slope = (us[-1] - us[-2]) / (qs[-1] - qs[-2])
            far = n > qs[-1]
            v[far] = us[-1] + slope * (n[far] - qs[-1])
        return cls(tuple(v.tolist()), draft_base, draft_row)


class AcceptanceModel:
    """What the decode loop has learned about its own rounds: how often a drafted node is accepted
    once its parent is, by its depth, its rank among its siblings and its conditional draft
    probability; and the rate R at which rounds emit tokens.

    A draft head trained to match the target's distribution is not calibrated for greedy
    verification, which accepts the target's argmax: on the demo pair a best child of draft
    probability 0.05 is accepted about a third of the time, a third child of the same probability
    rarely, and a chain that got three tokens accepted gets the fourth ~90 % of the time. Per cell
    the model counts tested and accepted nodes. A cell's estimate starts from `prior` pseudo-tests
    at the shallower depth's estimate (depth 1: at the bin's own probability), so cells the policy
    has not reached yet borrow what the shallower ones learned. Mutable, the talon-cost policy's
    `Learner` (talon/policy.py): the decode loop calls `learn` after every verification and
    `record_round` after every round.
    """

    EDGES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7)   # inner edges of the conditional probability bins
    RANKS = 4                                  # ranks 0, 1, 2 and 3+
    DEPTHS = (2, 3, 5)                         # depth buckets 1, 2, 3-4 and 5+
    RATE_DECAY = 0.95                          # weight of the past in the rate's moving sums
    REFRESH = 4                                # rounds between estimate refreshes, once warm
    REACH = 8                                  # chain steps `reach` projects

    def __init__(self, prior: float = 2.0, rate: float = 0.0):
        if not prior > 0:
            raise ValueError(f"acceptance model: prior must be > 0, got {prior}")
        edges = np.concatenate(([0.0], self.EDGES, [1.0]))
        self.centres = np.tile((edges[:-1] + edges[1:]) / 2, self.RANKS)
        self.prior = float(prior)
        self.log_edges = np.log(np.asarray(self.EDGES))
        self._depth_edges = np.asarray(self.DEPTHS)
        self.bins = len(self.EDGES) + 1
        self.shape = (len(self.DEPTHS) + 1, self.RANKS * self.bins)
        self.tested = np.zeros(self.shape)
        self.accepted = np.zeros(self.shape)
        self.table = np.zeros(self.shape)     # log P(accepted) per cell
        self.best = np.zeros(self.shape[0])   # P(accepted) of a best child per depth bucket
        self._updates = 0
        self._rank_cols = np.zeros(0, dtype=np.int64)
        self._reach: dict[int, list[float]] = {}   # depth -> reach row, until the next refresh
        self._estimate()
        self.rate = rate                       # tokens per unit of round time; 0 = not measured yet
        self._tokens = self._time = 0.0
        self._expanded: tuple[list, np.ndarray] | None = None

    def _cell(self, cond_logp: np.ndarray, rank: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Flat cell index of nodes at `depth` (>= 1) with sibling `rank` and `cond_logp`."""
        d = self._depth_edges.searchsorted(depth, side="right")
        col = np.minimum(rank, self.RANKS - 1) * self.bins + self.log_edges.searchsorted(cond_logp, side="right")
        return d * self.shape[1] + col

    def _estimate(self) -> None:
        above, best = self.centres, 0.5
        b = self.bins
        for d in range(self.shape[0]):
            est = (self.accepted[d] + self.prior * above) / (self.tested[d] + self.prior)
            self.table[d] = np.log(np.maximum(est, 1e-6))
            above = est
            best = (self.accepted[d, :b].sum() + self.prior * best) / (self.tested[d, :b].sum() + self.prior)
            self.best[d] = best
        self._reach = {}   # rebuilt on demand

    def log_accept(self, cond_logp: np.ndarray, rank: np.ndarray, depth: int | np.ndarray) -> np.ndarray:
        """log P(accepted | parent accepted) of nodes at `depth` with conditional draft log-probs
        `cond_logp` and sibling ranks `rank` (0 = the draft's best child)."""
        return self.table.ravel()[self._cell(cond_logp, rank, depth)]

    def log_accept_children(self, logp: np.ndarray, depth: int) -> np.ndarray:
        """`log_accept` of a draft call's [f, k] children (column = sibling rank), all at `depth`."""
        k = logp.shape[1]
        if self._rank_cols.shape[0] != k:
            self._rank_cols = np.minimum(np.arange(k), self.RANKS - 1) * self.bins
        row = self.table[bisect.bisect_right(self.DEPTHS, depth)]
        return row[self._rank_cols + self.log_edges.searchsorted(logp, side="right")]

    def reach(self, depth: int) -> list[float]:
        """P(a chain of best children below a node at `depth` is accepted down to each of the next
        REACH depths), one best-child probability per depth; a list (the policy's scalar path)."""
        row = self._reach.get(depth)
        if row is None:
            best, edges, p = self.best.tolist(), self.DEPTHS, 1.0
            row = []
            for d in range(depth + 1, depth + 1 + self.REACH):
                p *= best[bisect.bisect_right(edges, d)]
                row.append(p)
            self._reach[depth] = row
        return row

    def record_round(self, tokens: int, elapsed: float) -> None:
        """A round emitted `tokens` in `elapsed` time (the cost model's unit)."""
        self._tokens = self.RATE_DECAY * self._tokens + tokens
        self._time = self.RATE_DECAY * self._time + elapsed
        self.rate = self._tokens / self._time if self._time > 0 else 0.0

    def learn(self, tree: DraftTree, acc: Acceptance, greedy: bool) -> None:
        """`update` with a verified tree and its acceptance (greedy: acc.tokens are the target's
        argmax after each path node)."""
        self.update(tree.parents, tree.depth, tree.logp, acc.nodes, acc.tokens if greedy else None)

    def expanded(self, calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]], kept: np.ndarray) -> None:
        """The last build's draft calls: per call the expanded nodes [e] (drafting order indices)
        and their top-k children `ids`, `logp` [e, k] (conditional, best first); `kept[i]` is the
        drafting order index of the built tree's node i. Greedy updates test every drafted child
        of an accepted node, kept in the tree or not."""
        self._expanded = (calls, kept)

    def update(self, parents: np.ndarray, depth: np.ndarray, logp: np.ndarray, path: np.ndarray,
               target_tokens: np.ndarray | None = None) -> None:
        """One verified tree (`parents`, `depth`, cumulative `logp`) and its accepted path (node
        indices, root first). Greedy (`target_tokens`: the target's token after each path node):
        every drafted child of an expanded path node was tested, and accepted if it is the target's
        token. Otherwise: every tree node whose parent is on the path was tested."""
        expanded, self._expanded = self._expanded, None
        if target_tokens is not None and expanded is not None:
            calls, kept = expanded
            at = {node: j for j, node in enumerate(kept[path].tolist())}   # drafting index -> path position
            rows_ids, rows_logp, picks = [], [], []
            for nodes, ids, cond in calls:
                for r, node in enumerate(nodes.tolist()):
                    j = at.get(node)
                    if j is not None:
                        rows_ids.append(ids[r])
                        rows_logp.append(cond[r])
                        picks.append(j)
            if not picks:
                return
            j = np.asarray(picks)
            ids = np.stack(rows_ids)
            hit = ids == target_tokens[j][:, None]
            # path position j is depth j: its children are at depth j + 1
            cell = self._cell(np.stack(rows_logp), np.arange(ids.shape[1])[None, :], j[:, None] + 1)
            self._count(cell.ravel(), hit.ravel())
            return
        n = parents.shape[0]
        if n < 2:
            return
        on_path = np.zeros(n, dtype=np.bool_)
        on_path[path] = True
        tested = np.flatnonzero(on_path[parents[1:]]) + 1
        if tested.shape[0] == 0:
            return
        cond = logp[tested] - logp[parents[tested]]
        # rank among the tested siblings (all children of one path node), best first
        order = np.lexsort((-cond, parents[tested]))
        grouped = parents[tested][order]
        first = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
        rank = np.empty(tested.shape[0], dtype=np.int64)
        rank[order] = np.arange(tested.shape[0]) - np.repeat(first, np.diff(np.r_[first, tested.shape[0]]))
        self._count(self._cell(cond, rank, depth[tested]), on_path[tested])

    def _count(self, cell: np.ndarray, hit: np.ndarray) -> None:
        size = self.tested.size
        self.tested += np.bincount(cell, minlength=size).reshape(self.shape)
        self.accepted += np.bincount(cell[hit], minlength=size).reshape(self.shape)
        self._updates += 1
        if self._updates % self.REFRESH == 0 or self._updates < self.REFRESH:
            self._estimate()
