"""Draft-tree policies: ar, chain, eagle3 (EAGLE-2/3 topK_genrate), talon (paper Algorithm 2) and
talon-cost (TALON with the cost-aware extension). docs/design.md §4.

Every policy answers the decoder through one interface (`Policy`):
- `build(root_token, expand) -> DraftTree`: `expand(tree, rows)` is one draft engine call: given the
  tree built so far (every node added so far, parents before children) and the node indices `rows`
  (int64 [r], never empty), it returns `(ids int64 [r, k], logp float [r, k])`, each row's top-k
  children by draft log-prob, descending;
- `footprint() -> (target rows, draft scratch rows)` a round may write past the committed cache;
- `capped(room)`: the same policy shrunk so that a round fits in `room` free cache rows;
- `learner`: None, or the `Learner` the decoder feeds every verified round.
ar, chain, eagle3 and talon are frozen config dataclasses; talon-cost composes talon's config, the
engine's cost model and the state it learns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Protocol

import numpy as np

from talon.cost import AcceptanceModel, CostModel
from talon.nodes import ROOT, Expand, Nodes, check_int, layer_counts
from talon.sizer import Sizer
from talon.tree import BuildInfo, DraftTree, root_tree
from talon.verify import Acceptance


class Learner(Protocol):
    """What a policy learns from its own rounds; the decoder calls both after every verification."""

    def learn(self, tree: DraftTree, acc: Acceptance, greedy: bool) -> None:
        """The verified `tree` and its acceptance (`greedy`: acc.tokens are the target's argmax)."""

    def record_round(self, tokens: int, elapsed: float) -> None:
        """The round emitted `tokens` in `elapsed` microseconds (its learning included)."""


class Policy(Protocol):
    learner: Learner | None

    def build(self, root_token: int, expand: Expand) -> DraftTree: ...

    def footprint(self) -> tuple[int, int]: ...

    def capped(self, room: int) -> Policy: ...


def _root_only(root_token: int) -> DraftTree:
    return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))


@dataclass(frozen=True)
class ArPolicy:
    """No draft: the tree is the root alone (the autoregressive baseline through the same loop)."""

    learner: ClassVar[None] = None

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        return _root_only(root_token)

    def footprint(self) -> tuple[int, int]:
        return 1, 0

    def capped(self, room: int) -> ArPolicy:
        return self


@dataclass(frozen=True)
class ChainPolicy:
    """Classic speculative decoding: the draft's top-1 token, `depth` times."""

    depth: int = 4  # at the trial head's ~0.7 acceptance per step a 5th draft is reached < 25 % of rounds
    learner: ClassVar[None] = None

    def __post_init__(self) -> None:
        check_int("depth", self.depth, 1)

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        nodes = Nodes(self.depth + 1, root_token)
        row = ROOT
        for d in range(1, self.depth + 1):
            ids, logp = nodes.expand(expand, row)
            row = nodes.add(row, ids[:, 0], nodes.logp[row] + logp[:, 0], d)
        info = BuildInfo(draft_calls=self.depth, nodes_per_layer=(1,) * self.depth, drafted=self.depth)
        return nodes.tree(info)

    def footprint(self) -> tuple[int, int]:
        return self.depth + 1, self.depth - 1   # the first call appends the feed, not scratch

    def capped(self, room: int) -> ChainPolicy | ArPolicy:
        return ChainPolicy(depth=min(self.depth, room - 1)) if room >= 2 else ArPolicy()


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
    learner: ClassVar[None] = None

    def __post_init__(self) -> None:
        check_int("budget", self.budget, 1)
        check_int("top_k", self.top_k, 1)
        check_int("depth", self.depth, 0)

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        if self.budget == 1:
            return _root_only(root_token)
        k, keep = self.top_k, self.budget - 1
        nodes = Nodes(1 + k + self.depth * k * k, root_token)
        key = np.empty(nodes.tokens.shape[0], dtype=np.float64)  # running-min score, the rank key
        key[0] = 0.0
        ids, logp = nodes.expand(expand, ROOT)
        ids, logp = ids[:, :k], logp[:, :k]
        beam = nodes.add(np.zeros(ids.shape[1], dtype=np.int64), ids[0], logp[0], 1)
        key[beam] = np.minimum(nodes.logp[beam], 0.0)
        for d in range(2, self.depth + 2):
            ids, logp = nodes.expand(expand, beam)
            ids, logp = ids[:, :k], logp[:, :k]
            kk = ids.shape[1]
            score = (nodes.logp[beam][:, None] + logp).ravel()  # [beam * kk], parent-major
            new = nodes.add(np.repeat(beam, kk), ids.ravel(), score, d)
            key[new] = np.minimum(score, np.repeat(key[beam], kk))
            # the next beam in descending score order (EAGLE's torch.topk; ties: earlier first)
            beam = new[np.argsort(-score, kind="stable")[:k]]
        # the root and the `keep` drafted nodes with the highest key (ties: earlier node first), in
        # drafting order: the key never increases from a parent to its child, so the set is closed
        kept = np.sort(np.argsort(-key[1:nodes.n], kind="stable")[:keep]) + 1
        return nodes.subtree(np.concatenate(([0], kept)), self.depth + 1, nodes.n - 1)

    def footprint(self) -> tuple[int, int]:
        return self.budget, (self.depth * self.top_k if self.budget > 1 else 0)

    def capped(self, room: int) -> Eagle3Policy:
        return Eagle3Policy(budget=min(self.budget, room), top_k=self.top_k,
                            depth=min(self.depth, room // self.top_k))


def _gate(parent_logp: np.ndarray, logp: np.ndarray, log_mu: float,
          layer: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Algorithm 2's candidate pool over one draft call: the children's cumulative scores [f, k], the
    gate score >= log(mu) + the best score (p >= mu * m in log space), and how many parents had all
    their k children pass (the pool was cut by k there)."""
    score = parent_logp[:, None] + logp   # [f, k]
    best = score.max()
    if best != best:
        raise ValueError(f"expand: NaN log-probs at layer {layer}")
    passed = score >= best + log_mu
    return score, passed, int(np.count_nonzero(passed.all(axis=1)))


def _add_best(nodes: Nodes, frontier: np.ndarray, ids: np.ndarray, score: np.ndarray, flat: np.ndarray,
              room: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Add the candidates `flat` (flat [f, k] indices, pool order) as layer `layer`, only the best
    `room` by score (ties: pool order) if they overflow; returns (the new nodes, their flat indices)."""
    if flat.shape[0] > room:
        best = np.argsort(-score.ravel()[flat], kind="stable")[:room]
        flat = flat[np.sort(best)]
    return nodes.add(frontier[flat // ids.shape[1]], ids.ravel()[flat], score.ravel()[flat], layer), flat


@dataclass(frozen=True)
class TalonPolicy:
    """TALON (arXiv 2601.07353, Algorithm 2): budget-driven adaptive tree with confidence gating.

    Layer 1 is the root's top root_k children whatever their confidence. Each later layer scores
    every child of every node of the previous layer by cumulative path probability; with m the best
    score, the candidates with score >= mu * m are kept (in log space: logp >= log(mu) + log m), and
    if they overflow the budget only the best (budget - size) by score (ties: pool order). All kept
    nodes form the next frontier. The budget is the only stop rule; there is no final rerank.
    """

    budget: int = 60  # the paper's N on an H200; CPUs want less, the benchmark sweeps it
    root_k: int = 10  # the paper's K: robust initialisation with the root's top-10
    mu: float = 0.03  # the paper's gate: keep paths within 3 % of the layer's best path
    learner: ClassVar[None] = None

    def __post_init__(self) -> None:
        check_int("budget", self.budget, 1)
        check_int("root_k", self.root_k, 1)
        if not (isinstance(self.mu, (int, float)) and 0.0 < self.mu <= 1.0):
            raise ValueError(f"mu must be in (0, 1], got {self.mu!r}")

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        if self.budget == 1:
            return _root_only(root_token)
        nodes = Nodes(self.budget, root_token)
        ids, logp = nodes.expand(expand, ROOT)
        k0 = min(self.root_k, ids.shape[1], self.budget - 1)
        frontier = nodes.add(np.zeros(k0, dtype=np.int64), ids[0, :k0], logp[0, :k0], 1)
        layer, drafted, truncated, log_mu = 1, ids.shape[1], 0, math.log(self.mu)
        while nodes.n < self.budget:
            ids, logp = nodes.expand(expand, frontier)
            layer += 1
            score, passed, cut = _gate(nodes.logp[frontier], logp, log_mu, layer)
            drafted, truncated = drafted + score.size, truncated + cut
            flat = np.flatnonzero(passed)
            if flat.shape[0] == 0:
                raise ValueError(f"expand: no child passed the gate at layer {layer}")
            frontier, _ = _add_best(nodes, frontier, ids, score, flat, self.budget - nodes.n, layer)
        info = BuildInfo(draft_calls=layer, nodes_per_layer=layer_counts(nodes.depth[:nodes.n]),
                         drafted=drafted, pool_truncated=truncated)
        return nodes.tree(info)

    def footprint(self) -> tuple[int, int]:
        return self.budget, self.budget - 1

    def capped(self, room: int) -> TalonPolicy:
        return replace(self, budget=min(self.budget, room))


class TalonCostPolicy:
    """TALON with the cost-aware stop and size, an extension beside the paper (talon/cost.py).

    `talon` is the paper's config, its budget now a cap; `cost` the engine's measured call costs;
    `acceptance` what the decode loop learns about its rounds (the policy's `learner`; None: the
    draft's own probabilities stand for acceptance). The policy grows TALON's layers but deepens only
    while another layer is expected to pay for its draft call and bigger verify, and keeps the root's
    children and every node whose acceptance probability pays for the verify time it adds.
    """

    def __init__(self, talon: TalonPolicy, cost: CostModel, acceptance: AcceptanceModel | None = None):
        if cost.max_nodes < talon.budget:
            raise ValueError(f"cost model covers trees of up to {cost.max_nodes} nodes, "
                             f"budget is {talon.budget}")
        self.talon, self.cost, self.acceptance = talon, cost, acceptance

    def __repr__(self) -> str:
        return f"TalonCostPolicy({self.talon!r}, {self.cost!r}, {self.acceptance!r})"

    @property
    def learner(self) -> AcceptanceModel | None:
        return self.acceptance

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        budget = self.talon.budget
        if budget == 1:
            return _root_only(root_token)
        nodes = Nodes(budget, root_token)
        sizer = Sizer(self.cost, self.acceptance, nodes, budget)
        ids, logp = nodes.expand(expand, ROOT)
        k0 = min(self.talon.root_k, ids.shape[1], budget - 1)
        first = np.flatnonzero(sizer.drafted(ROOT, ids, logp, 1)[0, :k0])   # those worth their verify
        frontier = nodes.add(np.zeros(first.shape[0], dtype=np.int64), ids[0, first], logp[0, first], 1)
        sizer.added(frontier, first)
        layer, drafted, truncated, log_mu = 1, ids.shape[1], 0, math.log(self.talon.mu)
        while nodes.n < budget:
            frontier = sizer.deepen(frontier, layer)   # only the nodes whose children may pay
            if frontier.shape[0] == 0:
                break
            ids, logp = nodes.expand(expand, frontier)
            layer += 1
            score, passed, cut = _gate(nodes.logp[frontier], logp, log_mu, layer)
            drafted, truncated = drafted + score.size, truncated + cut
            flat = np.flatnonzero(passed & sizer.drafted(frontier, ids, logp, layer))
            if flat.shape[0] == 0:   # no child worth its verify cost
                break
            frontier, flat = _add_best(nodes, frontier, ids, score, flat, budget - nodes.n, layer)
            sizer.added(frontier, flat)
        return sizer.finish(layer, drafted, truncated)

    def footprint(self) -> tuple[int, int]:
        return self.talon.footprint()

    def capped(self, room: int) -> TalonCostPolicy:
        return TalonCostPolicy(self.talon.capped(room), self.cost, self.acceptance)


POLICIES: dict[str, type] = {"ar": ArPolicy, "chain": ChainPolicy, "eagle3": Eagle3Policy,
                             "talon": TalonPolicy, "talon-cost": TalonCostPolicy}


def make_policy(name: str, **options) -> Policy:
    """A policy by name with its config fields as keyword options. talon-cost takes talon's and
    `cost` (the engine's CostModel), and learns from a fresh AcceptanceModel."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")
    costed = name == "talon-cost"
    config = TalonPolicy if costed else POLICIES[name]
    allowed = {f.name for f in fields(config)} | ({"cost"} if costed else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"policy {name!r} has no option {unknown[0]!r} "
                         f"(options: {', '.join(sorted(allowed)) or 'none'})")
    if not costed:
        return config(**options)
    cost = options.pop("cost", None)
    if cost is None:
        raise ValueError("policy 'talon-cost' needs option 'cost' (the engine's measured CostModel)")
    return TalonCostPolicy(TalonPolicy(**options), cost, AcceptanceModel())
