"""Draft-tree policies: ar, chain, eagle3 (EAGLE-2/3 topK_genrate) and talon (paper Algorithm 2).

Every policy is a frozen config dataclass with one method, `build(root_token, expand) -> DraftTree`.
`expand(tree, rows)` is one draft engine call: given the tree built so far (every node added so far,
parents before children) and the node indices `rows` (int64 [r], never empty), it returns
`(ids int64 [r, k], logp float [r, k])`, each row's top-k children by draft log-prob, descending.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from talon.cost import AcceptanceModel, CostModel
from talon.tree import BuildInfo, DraftTree, root_tree

Expand = Callable[[DraftTree, np.ndarray], tuple[np.ndarray, np.ndarray]]


class _Nodes:
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

    def add(self, parents: np.ndarray, tokens: np.ndarray, logp: np.ndarray, depth: int) -> np.ndarray:
        """Append one layer; return the new node indices."""
        a, b = self.n, self.n + tokens.shape[0]
        self.tokens[a:b], self.parents[a:b], self.logp[a:b] = tokens, parents, logp
        self.depth[a:b] = depth
        self.n = b
        return np.arange(a, b)


def _call(expand: Expand, nodes: _Nodes, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, logp = expand(nodes.tree(), rows)
    if ids.ndim != 2 or ids.shape[0] != rows.shape[0] or logp.shape != ids.shape or ids.shape[1] < 1:
        raise ValueError(f"expand: expected ids and logp of shape ({rows.shape[0]}, k>=1), "
                         f"got {ids.shape} and {logp.shape}")
    return ids, logp


def _check_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _layer_counts(depth: np.ndarray) -> tuple[int, ...]:
    return tuple(int(c) for c in np.bincount(depth)[1:])


def _keep_best(nodes: _Nodes, key: np.ndarray, keep: int, calls: int, drafted: int) -> DraftTree:
    """The root and the `keep` drafted nodes with the highest rank `key` (ties: earlier node first),
    in drafting order. `key` must never increase from a parent to its child (a running minimum of
    the path score), so the kept set is closed under ancestors."""
    kept = np.sort(np.argsort(-key[1:nodes.n], kind="stable")[:keep]) + 1
    return _subtree(nodes, np.concatenate(([0], kept)), calls, drafted)


def _subtree(nodes: _Nodes, sel: np.ndarray, calls: int, drafted: int, truncated: int = 0) -> DraftTree:
    """The tree of drafted nodes `sel` (ascending, the root first, closed under ancestors)."""
    remap = np.full(nodes.n, -1, dtype=np.int64)
    remap[sel] = np.arange(sel.shape[0])
    parents = remap[nodes.parents[sel]]
    parents[0] = -1
    depth = nodes.depth[sel]
    info = BuildInfo(draft_calls=calls, nodes_per_layer=_layer_counts(depth), drafted=drafted,
                     pool_truncated=truncated)
    return DraftTree(nodes.tokens[sel], parents, depth, nodes.logp[sel], info)


@dataclass(frozen=True)
class ArPolicy:
    """No draft: the tree is the root alone (the autoregressive baseline through the same loop)."""

    max_nodes: ClassVar[int] = 1

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))


@dataclass(frozen=True)
class ChainPolicy:
    """Classic speculative decoding: the draft's top-1 token, `depth` times."""

    depth: int = 4  # at the trial head's ~0.7 acceptance per step a 5th draft is reached < 25 % of rounds

    def __post_init__(self) -> None:
        _check_int("depth", self.depth, 1)

    @property
    def max_nodes(self) -> int:
        return self.depth + 1

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        nodes = _Nodes(self.depth + 1, root_token)
        row = np.zeros(1, dtype=np.int64)
        for d in range(1, self.depth + 1):
            ids, logp = _call(expand, nodes, row)
            row = nodes.add(row, ids[:, 0], nodes.logp[row] + logp[:, 0], d)
        info = BuildInfo(draft_calls=self.depth, nodes_per_layer=(1,) * self.depth, drafted=self.depth)
        return nodes.tree(info)


@dataclass(frozen=True)
class Eagle3Policy:
    """EAGLE-2/3 `topK_genrate`: a fixed-shape beam of top_k parents per layer, then a global rerank.

    Layer 1 is the root's top_k children; each of `depth` further draft calls expands the current
    top_k parents (top_k children each) and the global top_k of those top_k**2 children by cumulative
    log-prob become the next parents. All drafted nodes are then ranked by cumulative log-prob (ties:
    earlier node first) and the best budget-1 are kept, in drafting order, so parents precede
    children. A child never outscores its parent (log-probs are <= 0), so the kept set is closed under
    ancestors; the rank key is a running minimum along the path so that this holds for any input.
    `expand` sees every drafted node (up to 1 + top_k + depth * top_k**2), kept in the end or not.
    """

    budget: int = 60  # EAGLE-3's total_token=60: 59 drafts + root
    top_k: int = 10  # EAGLE-3's default beam width and children per node
    depth: int = 7  # EAGLE-3's default: 7 expansions after the root's call, 8 draft calls in all
    # extension (off = EAGLE): skip the remaining calls once no deeper node can enter the kept set;
    # the tree is unchanged, only the draft calls drop
    exact_stop: bool = False

    def __post_init__(self) -> None:
        _check_int("budget", self.budget, 1)
        _check_int("top_k", self.top_k, 1)
        _check_int("depth", self.depth, 0)

    @property
    def max_nodes(self) -> int:
        return self.budget

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        if self.budget == 1:
            return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))
        k, keep = self.top_k, self.budget - 1
        nodes = _Nodes(1 + k + self.depth * k * k, root_token)
        key = np.empty(nodes.tokens.shape[0], dtype=np.float64)  # running-min score, the rank key
        key[0] = 0.0
        ids, logp = _call(expand, nodes, np.zeros(1, dtype=np.int64))
        ids, logp = ids[:, :k], logp[:, :k]
        beam = nodes.add(np.zeros(ids.shape[1], dtype=np.int64), ids[0], logp[0], 1)
        key[beam] = np.minimum(nodes.logp[beam], 0.0)
        calls = 1
        for d in range(2, self.depth + 2):
            if self.exact_stop and np.count_nonzero(key[1:nodes.n] >= key[beam].max()) >= keep:
                break
            ids, logp = _call(expand, nodes, beam)
            ids, logp = ids[:, :k], logp[:, :k]
            calls += 1
            kk = ids.shape[1]
            score = (nodes.logp[beam][:, None] + logp).ravel()  # [beam * kk], parent-major
            new = nodes.add(np.repeat(beam, kk), ids.ravel(), score, d)
            key[new] = np.minimum(score, np.repeat(key[beam], kk))
            # the next beam in descending score order (EAGLE's torch.topk; ties: earlier first)
            beam = new[np.argsort(-score, kind="stable")[:k]]
        return _keep_best(nodes, key, keep, calls, nodes.n - 1)


@dataclass(frozen=True)
class TalonPolicy:
    """TALON (arXiv 2601.07353, Algorithm 2): budget-driven adaptive tree with confidence gating.

    Layer 1 is the root's top root_k children whatever their confidence. Each later layer scores
    every child of every node of the previous layer by cumulative path probability; with m the best
    score, the candidates with score >= mu * m are kept (in log space: logp >= log(mu) + log m), and
    if they overflow the budget only the best (budget - size) by score (ties: pool order). All kept
    nodes form the next frontier. The budget is the only stop rule; there is no final rerank.

    Extension (off = paper): with a `cost` model the budget becomes a cap; the policy stops deepening
    when another layer is not expected to pay for its draft call and bigger verify, and keeps the
    tree size with the best expected tokens per unit of round time (talon/cost.py).
    """

    budget: int = 60  # the paper's N on an H200; CPUs want less, the benchmark sweeps it
    root_k: int = 10  # the paper's K: robust initialisation with the root's top-10
    mu: float = 0.03  # the paper's gate: keep paths within 3 % of the layer's best path
    max_depth: int | None = None  # extension (None = paper): stop after this many draft layers
    cost: CostModel | None = None  # extension (None = paper): cost-aware stop and size, see talon/cost.py
    acceptance: AcceptanceModel | None = None  # with cost: calibrated acceptance (None: draft probs)

    def __post_init__(self) -> None:
        _check_int("budget", self.budget, 1)
        _check_int("root_k", self.root_k, 1)
        if not (isinstance(self.mu, (int, float)) and 0.0 < self.mu <= 1.0):
            raise ValueError(f"mu must be in (0, 1], got {self.mu!r}")
        if self.max_depth is not None:
            _check_int("max_depth", self.max_depth, 1)
        if self.cost is not None and self.cost.max_nodes < self.budget:
            raise ValueError(f"cost model covers trees of up to {self.cost.max_nodes} nodes, "
                             f"budget is {self.budget}")

    @property
    def max_nodes(self) -> int:
        return self.budget

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        n_max = self.budget
        if n_max == 1:
            return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))
        nodes = _Nodes(n_max, root_token)
        ids, logp = _call(expand, nodes, np.zeros(1, dtype=np.int64))
        k0 = min(self.root_k, ids.shape[1], n_max - 1)
        first = np.arange(k0)
        sizer = _Sizer(self, nodes) if self.cost is not None else None
        if sizer is not None:   # only the root's children worth their verify cost
            first = np.flatnonzero(sizer.drafted(np.zeros(1, np.int64), ids, logp, 1)[0, :k0])
        frontier = nodes.add(np.zeros(first.shape[0], dtype=np.int64), ids[0, first], logp[0, first], 1)
        if sizer is not None:
            sizer.added(frontier, first)
        calls, drafted, truncated, layer = 1, ids.shape[1], 0, 1
        log_mu = math.log(self.mu)
        max_depth = self.max_depth or n_max
        while nodes.n < n_max and layer < max_depth:
            if sizer is not None:
                frontier = sizer.deepen(frontier, layer)   # only the nodes whose children may pay
                if frontier.shape[0] == 0:
                    break
            ids, logp = _call(expand, nodes, frontier)
            calls += 1
            layer += 1
            k = ids.shape[1]
            score = nodes.logp[frontier][:, None] + logp  # [f, k] cumulative log-prob
            best = score.max()
            if best != best:
                raise ValueError(f"expand: NaN log-probs at layer {layer}")
            passed = score >= best + log_mu
            truncated += int(np.count_nonzero(passed.all(axis=1)))
            drafted += score.size
            if sizer is not None:
                passed &= sizer.drafted(frontier, ids, logp, layer)
            flat = np.flatnonzero(passed)  # parent-major pool order
            if flat.shape[0] == 0:
                if sizer is not None:   # no child worth its verify cost
                    break
                raise ValueError(f"expand: no child passed the gate at layer {layer}")
            room = n_max - nodes.n
            if flat.shape[0] > room:
                best = np.argsort(-score.ravel()[flat], kind="stable")[:room]
                flat = flat[np.sort(best)]
            frontier = nodes.add(frontier[flat // k], ids.ravel()[flat], score.ravel()[flat], layer)
            if sizer is not None:
                sizer.added(frontier, flat)
        if sizer is not None:
            return sizer.finish(calls, drafted, truncated)
        info = BuildInfo(draft_calls=calls, nodes_per_layer=_layer_counts(nodes.depth[:nodes.n]),
                         drafted=drafted, pool_truncated=truncated)
        return nodes.tree(info)


class _Sizer:
    """The cost-aware extension's bookkeeping for one TalonPolicy build (talon/cost.py)."""

    LOOKAHEAD = np.arange(1, AcceptanceModel.REACH + 1)   # layers projected when deciding to draw

    def __init__(self, policy: TalonPolicy, nodes: _Nodes):
        cost = policy.cost
        assert cost is not None
        self.cost, self.nodes, self.acceptance = cost, nodes, policy.acceptance
        rate = self.acceptance.rate if self.acceptance is not None else 0.0
        if rate <= 0:   # nothing measured yet: the rate of root-only rounds
            rate = 1.0 / (cost.round_base + cost.draft_call(1) + cost.verify[0])
        self.rate = rate
        self.node_cost = rate * cost.slope                  # acceptance a node must beat
        self.log_min = math.log(self.node_cost) if self.node_cost > 0 else -math.inf
        self.key = np.empty(policy.budget, dtype=np.float64)   # running-min log P(path accepted)
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
        return _subtree(self.nodes, sel, calls, drafted, truncated)


Policy = ArPolicy | ChainPolicy | Eagle3Policy | TalonPolicy
POLICIES: dict[str, type] = {"ar": ArPolicy, "chain": ChainPolicy, "eagle3": Eagle3Policy,
                             "talon": TalonPolicy}


def make_policy(name: str, **options) -> Policy:
    """A policy by name (ar | chain | eagle3 | talon) with its config fields as keyword options."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"policy {name!r} has no option {unknown[0]!r} "
                         f"(options: {', '.join(sorted(allowed)) or 'none'})")
    return cls(**options)
