"""Draft-tree policies: ar, chain, eagle3 (EAGLE-2/3 topK_genrate), talon (paper Algorithm 2),
talon-cost (TALON with the cost-aware extension), lookup (context lookup alone) and talon-lookup
(TALON's tree with the lookup's candidates in its pool). docs/design.md §4.

Every policy answers the decoder through one interface (`Policy`):
- `build(root_token, expand) -> DraftTree`: `expand(tree, rows)` is one draft engine call: given the
  tree built so far (every node added so far, parents before children) and the node indices `rows`
  (int64 [r], never empty), it returns `(ids int64 [r, k], logp float [r, k])`, each row's top-k
  children by draft log-prob, descending;
- `footprint() -> (target rows, draft scratch rows)` a round may write past the committed cache;
- `capped(room)`: the same policy shrunk so that a round fits in `room` free cache rows;
- `learner`: None, or the `Learner` the decoder feeds every verified round;
- `history`: None, or the `History` (the text so far) the decoder feeds the prompt and every round.
ar, chain, eagle3 and talon are frozen config dataclasses; talon-cost composes talon's config, the
engine's cost model and the state it learns; lookup and talon-lookup own a `Lookup` index.
talon/policies.py registers each by name (`make_policy`, `policy_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import numpy as np

from talon_rt.talon.cost import AcceptanceModel, CostModel
from talon_rt.talon.lookup import Lookup, Proposal
from talon_rt.talon.nodes import ROOT, Expand, Nodes, check_int, layer_counts
from talon_rt.talon.sizer import Sizer
from talon_rt.talon.tree import BuildInfo, DraftTree, root_tree
from talon_rt.talon.verify import Acceptance


class Learner(Protocol):
    """What a policy learns from its own rounds; the decoder calls both after every verification."""

    def learn(self, tree: DraftTree, acc: Acceptance, greedy: bool) -> None:
        """The verified `tree` and its acceptance (`greedy`: acc.tokens are the target's argmax)."""

    def record_round(self, tokens: int, elapsed: float) -> None:
        """The round emitted `tokens` in `elapsed` microseconds (its learning included)."""


class History(Protocol):
    """The text a policy drafts from; the decoder calls `reset` with the prompt and the first token,
    then `extend` with every verified round's tokens."""

    def reset(self, tokens: Iterable[int]) -> None: ...

    def extend(self, tokens: Iterable[int]) -> None: ...


class Policy(Protocol):
    learner: Learner | None
    history: History | None

    def build(self, root_token: int, expand: Expand) -> DraftTree: ...

    def footprint(self) -> tuple[int, int]: ...

    def capped(self, room: int) -> Policy: ...


def _root_only(root_token: int) -> DraftTree:
    return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))


@dataclass(frozen=True)
class ArPolicy:
    """No draft: the tree is the root alone (the autoregressive baseline through the same loop)."""

    learner: ClassVar[None] = None
    history: ClassVar[None] = None

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
    history: ClassVar[None] = None

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
    history: ClassVar[None] = None

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
    history: ClassVar[None] = None

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

    history = None

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


def _add_proposal(nodes: Nodes, prop: Proposal, sel: np.ndarray) -> np.ndarray:
    """Add the lookup's trie nodes `sel` (ascending, closed under trie parents) under the root."""
    remap = np.full(prop.size, -1, dtype=np.int64)
    remap[sel] = np.arange(nodes.n, nodes.n + sel.shape[0])
    tp = prop.parents[sel]
    parents = np.where(tp < 0, ROOT[0], remap[np.maximum(tp, 0)])
    return nodes.add(parents, prop.tokens[sel], prop.logp[sel], prop.depth[sel])


def _lookup_tree(nodes: Nodes, prop: Proposal, room: int, drafted: int) -> DraftTree:
    """The root and the lookup's best `room` nodes: a tree without a draft call."""
    new = _add_proposal(nodes, prop, prop.best(room))
    info = BuildInfo(draft_calls=0, nodes_per_layer=layer_counts(nodes.depth[:nodes.n]), drafted=drafted,
                     lookup=tuple(new.tolist()))
    return nodes.tree(info)


class LookupPolicy:
    """Context lookup alone (talon/lookup.py): the root and the best budget-1 nodes of the lookup's
    continuation trie, by score. No draft head: every round is one target call."""

    learner = None

    def __init__(self, budget: int = 16, lookup: Lookup | None = None):
        check_int("budget", budget, 1)
        self.budget = budget    # the sessions' CPU default; a lookup trie rarely holds more
        self.history = lookup if lookup is not None else Lookup()

    def __repr__(self) -> str:
        return f"LookupPolicy(budget={self.budget}, {self.history!r})"

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        prop = self.history.propose(self.budget - 1)
        return _lookup_tree(Nodes(self.budget, root_token), prop, self.budget - 1, prop.size)

    def footprint(self) -> tuple[int, int]:
        return self.budget, 0

    def capped(self, room: int) -> LookupPolicy:
        return LookupPolicy(min(self.budget, room), self.history)


def _lookup_candidates(prop: Proposal, layer: int, where: np.ndarray, frontier: np.ndarray,
                       ids: np.ndarray, score: np.ndarray, trie: np.ndarray) -> tuple[np.ndarray, ...]:
    """The lookup's candidates for tree layer `layer`: its trie nodes at that depth whose trie parent
    is in the tree (`where`: trie node -> tree node, -1 if not kept). One that duplicates a head child
    (same parent, same token) merges into it: `score` [f, k] takes the better score and `trie` [f, k]
    records the trie node, in place. Returns the others as (parents, tokens, scores, trie nodes)."""
    at = np.flatnonzero(prop.depth == layer)
    tp = prop.parents[at]
    parent = np.where(tp < 0, ROOT[0], where[np.maximum(tp, 0)])
    at, parent = at[parent >= 0], parent[parent >= 0]
    extra = np.ones(at.shape[0], dtype=bool)
    for j in range(at.shape[0]):   # a trie holds at most `recent` nodes per depth
        r = int(parent[j] - frontier[0])   # the frontier is the previous layer, contiguous
        hit = np.flatnonzero(ids[r] == prop.tokens[at[j]])
        if hit.shape[0]:
            c = int(hit[0])
            score[r, c] = max(score[r, c], prop.logp[at[j]])
            trie[r, c] = at[j]
            extra[j] = False
    at = at[extra]
    return parent[extra], prop.tokens[at], prop.logp[at], at


class TalonLookupPolicy:
    """TALON's tree with the context lookup's continuations as candidates, under one budget.

    Every layer's pool holds the head's children of the frontier (TALON, §4.4) and the lookup trie's
    nodes at that depth whose trie parent is in the tree, each with its lookup score (talon/lookup.py:
    a log-probability estimate from the match's length and counts). A lookup node equal to a head
    child (same parent, same token) is one candidate with the better of the two scores. Layer 1 keeps
    every candidate (the head's root_k and the lookup's), later layers gate the pool as TALON does,
    and overflow keeps the best by score. When the lookup alone proposes budget-1 nodes scoring at
    least log(skip), the tree is those nodes and the round makes no draft call for its tree. With
    no match the tree is TALON's.
    """

    learner = None

    def __init__(self, talon: TalonPolicy, lookup: Lookup | None = None, skip: float = 0.5):
        if not (isinstance(skip, (int, float)) and 0.0 < skip <= 1.0):
            raise ValueError(f"skip must be in (0, 1], got {skip!r}")
        self.talon, self.skip = talon, skip   # skip 0.5: every node likelier accepted than not
        self.history = lookup if lookup is not None else Lookup()

    def __repr__(self) -> str:
        return f"TalonLookupPolicy({self.talon!r}, {self.history!r}, skip={self.skip})"

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        budget = self.talon.budget
        if budget == 1:
            return _root_only(root_token)
        prop = self.history.propose(budget - 1)
        nodes = Nodes(budget, root_token)
        if np.count_nonzero(prop.logp >= math.log(self.skip)) >= budget - 1:   # the lookup fills the budget
            return _lookup_tree(nodes, prop, budget - 1, prop.size)
        where = np.full(prop.size, -1, dtype=np.int64)   # trie node -> tree node
        found: list[np.ndarray] = []
        ids, logp = nodes.expand(expand, ROOT)
        k0 = min(self.talon.root_k, ids.shape[1], budget - 1)
        frontier, ids, score = ROOT, ids[:, :k0], logp[:, :k0].astype(np.float64)
        layer, drafted, truncated, log_mu = 1, ids.shape[1] + prop.size, 0, math.log(self.talon.mu)
        while True:
            trie = np.full(score.shape, -1, dtype=np.int64)
            ex_parent, ex_tokens, ex_score, ex_trie = _lookup_candidates(prop, layer, where, frontier, ids,
                                                                         score, trie)
            pool = np.concatenate((score.ravel(), ex_score))
            best = pool.max()
            if best != best:
                raise ValueError(f"expand: NaN log-probs at layer {layer}")
            if layer == 1:   # robust initialisation: the root's top-K, and the lookup's first tokens
                flat = np.arange(pool.shape[0])
            else:
                passed = pool >= best + log_mu
                truncated += int(np.count_nonzero(passed[:score.size].reshape(score.shape).all(axis=1)))
                flat = np.flatnonzero(passed)
            room = budget - nodes.n
            if flat.shape[0] > room:
                flat = flat[np.sort(np.argsort(-pool[flat], kind="stable")[:room])]
            parents = np.concatenate((np.repeat(frontier, ids.shape[1]), ex_parent))
            tokens = np.concatenate((ids.ravel(), ex_tokens))
            tries = np.concatenate((trie.ravel(), ex_trie))[flat]
            frontier = nodes.add(parents[flat], tokens[flat], pool[flat], layer)
            where[tries[tries >= 0]] = frontier[tries >= 0]
            found.append(frontier[tries >= 0])
            if nodes.n >= budget:
                break
            ids, logp = nodes.expand(expand, frontier)
            score = nodes.logp[frontier][:, None] + logp
            layer += 1
            drafted += score.size
        info = BuildInfo(draft_calls=layer, nodes_per_layer=layer_counts(nodes.depth[:nodes.n]),
                         drafted=drafted, pool_truncated=truncated,
                         lookup=tuple(np.concatenate(found).tolist()))
        return nodes.tree(info)

    def footprint(self) -> tuple[int, int]:
        return self.talon.footprint()

    def capped(self, room: int) -> TalonLookupPolicy:
        return TalonLookupPolicy(self.talon.capped(room), self.history, self.skip)
