"""The cost-aware extension's per-build bookkeeping (docs/design.md §4.5; the rules: talon/cost.py)."""

from __future__ import annotations

import math

import numpy as np

from talon_rt.talon.cost import AcceptanceModel, CostModel
from talon_rt.talon.nodes import Nodes
from talon_rt.talon.tree import DraftTree


class Sizer:
    """The cost-aware extension's bookkeeping for one build of a tree of up to `budget` nodes
    in `nodes`: each node's running-min log P(path accepted), what to keep and what to deepen."""

    LOOKAHEAD = np.arange(1, AcceptanceModel.REACH + 1)   # layers projected when deciding to draw

    def __init__(self, cost: CostModel, acceptance: AcceptanceModel | None, nodes: Nodes, budget: int):
        self.cost, self.nodes, self.acceptance = cost, nodes, acceptance
        rate = self.acceptance.rate if self.acceptance is not None else 0.0
        if rate <= 0:   # nothing measured yet: the rate of root-only rounds
            rate = 1.0 / (cost.draft_call(1) + cost.verify[0])
        self.rate = rate
        self.node_cost = rate * cost.slope                  # acceptance a node must beat
        self.log_min = math.log(self.node_cost) if self.node_cost > 0 else -math.inf
        self.key = np.empty(budget, dtype=np.float64)   # running-min log P(path accepted)
        self.key[0] = 0.0
        # (expanded nodes, their top-k children): the acceptance model tests them after verification
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.cal = np.zeros((0, 0))   # the last call's children: log P(accepted | parent accepted)
        self.alpha = 0.0              # a frontier node's best child's acceptance, from the last call

    def drafted(self, frontier: np.ndarray, ids: np.ndarray, logp: np.ndarray, depth: int) -> np.ndarray:
        """A draft call expanded `frontier` (children at `depth`); returns [f, k] bool: the children
        whose acceptance probability pays for their verify cost."""
        if self.acceptance is not None:   # copies: expand may reuse its buffers
            self.calls.append((frontier, ids.copy(), logp.copy()))
        self.cal = logp if self.acceptance is None else self.acceptance.log_accept_children(logp, depth)
        top = self.key[frontier]
        if top.shape[0] == 1:
            self.alpha = math.exp(self.cal[0, 0])
        else:
            w = np.exp(top)
            self.alpha = float(np.dot(w, np.exp(self.cal[:, 0])) / w.sum())
        return top[:, None] + self.cal >= self.log_min

    def added(self, new: np.ndarray, flat: np.ndarray) -> None:
        """The last call's children `flat` (flat [f, k] indices) became nodes `new`."""
        up = self.key[self.nodes.parents[new]]
        self.key[new] = np.minimum(up + self.cal.ravel()[flat], up)

    def deepen(self, frontier: np.ndarray, depth: int) -> np.ndarray:
        """The frontier nodes (at `depth`) to expand next: those whose best child would be kept, and
        none unless some projection of 1..8 more layers adds more expected tokens than its draft
        calls cost. The projection grows a chain of best children from each such node, each as
        likely to be accepted as a best child at its depth has been (acceptance runs in streaks:
        the children of a deep accepted node are accepted more often); the first one uses the
        draft's own confidence when that says more (alpha)."""
        if self.acceptance is not None:
            reach = self.acceptance.reach(depth)
            scale = self.alpha / reach[0] if self.alpha > reach[0] else 1.0
        else:
            reach, scale = (self.alpha ** self.LOOKAHEAD).tolist(), 1.0
        chain = np.exp(self.key[frontier]) * scale
        if chain.shape[0] > 1:
            good = chain * reach[0] >= self.node_cost
            frontier, chain = frontier[good], chain[good]
        mass, count = float(chain.sum()), chain.shape[0]
        call = self.rate * self.cost.draft_call(count)
        gain = 0.0
        for layers, r in enumerate(reach, 1):
            # the projected layer's nodes, net of their verify cost, against one more draft call
            net = r * mass - self.node_cost * count
            if net <= 0.0:
                break
            gain += net
            if gain > call * layers:
                return frontier
        return frontier[:0]

    def finish(self, calls: int, drafted: int, truncated: int) -> DraftTree:
        """The root and every node worth its verify cost, in drafting order (closed under ancestors:
        the key never grows from a parent to its child); tells the acceptance model which kept
        nodes were expanded."""
        keep = self.key[:self.nodes.n] >= self.log_min
        keep[0] = True
        sel = np.flatnonzero(keep)
        if self.acceptance is not None:
            self.acceptance.expanded(self.calls, sel)
        return self.nodes.subtree(sel, calls, drafted, truncated)
