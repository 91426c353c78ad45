"""Draft-tree policies: structural properties, and equality with slow references of the published rules."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talon_rt.talon import (AcceptanceModel, ArPolicy, ChainPolicy, CostModel, DraftTree, Eagle3Policy, TalonPolicy,
                   make_policy)
from talon_rt.talon.synthetic import SyntheticDraft

PROPERTY = settings(max_examples=500, deadline=None, derandomize=True)


def talon_reference(draft: SyntheticDraft, root: int, budget: int, root_k: int, mu: float):
    """Algorithm 2 over the full vocabulary, one node at a time. Nodes: (token, parent, depth, logp)."""
    nodes = [(root, -1, 0, 0.0)]
    paths = [[root]]
    if budget == 1:
        return nodes, 0
    calls = 1
    frontier = []
    for token, lp in draft.children([root])[:min(root_k, budget - 1)]:
        nodes.append((token, 0, 1, 0.0 + lp))
        paths.append([root, token])
        frontier.append(len(nodes) - 1)
    depth = 1
    while len(nodes) < budget:
        calls += 1
        depth += 1
        pool = []  # (score, parent, token) in frontier order, then the draft's child order
        for parent in frontier:
            for token, lp in draft.children(paths[parent]):
                pool.append((nodes[parent][3] + lp, parent, token))
        anchor = max(score for score, _, _ in pool)
        kept = [c for c in pool if c[0] >= anchor + math.log(mu)]  # p >= mu * m, in log space
        room = budget - len(nodes)
        if len(kept) > room:
            best = sorted(kept, key=lambda c: -c[0])[:room]
            kept = [c for c in kept if c in best]
        frontier = []
        for score, parent, token in kept:
            nodes.append((token, parent, depth, score))
            paths.append(paths[parent] + [token])
            frontier.append(len(nodes) - 1)
    return nodes, calls


def eagle3_reference(draft: SyntheticDraft, root: int, budget: int, top_k: int, depth: int):
    """EAGLE-2/3 topK_genrate, transliterated: a top_k beam, all top_k**2 children scored, rerank."""
    if budget == 1:
        return [(root, -1, 0, 0.0)], 0
    pool = []  # drafted nodes: (score, token, parent pool index or -1 for the root, depth, path)
    for token, lp in draft.children([root])[:top_k]:
        pool.append((lp, token, -1, 1, [root, token]))
    beam = list(range(len(pool)))
    calls = 1
    for d in range(2, depth + 2):
        calls += 1
        layer = []
        for b in beam:
            for token, lp in draft.children(pool[b][4])[:top_k]:
                layer.append(len(pool))
                pool.append((pool[b][0] + lp, token, b, d, pool[b][4] + [token]))
        beam = sorted(layer, key=lambda i: -pool[i][0])[:top_k]
    kept = sorted(sorted(range(len(pool)), key=lambda i: -pool[i][0])[:budget - 1])
    where = {i: j + 1 for j, i in enumerate(kept)}
    nodes = [(root, -1, 0, 0.0)]
    for i in kept:
        score, token, parent, d, _ = pool[i]
        assert parent == -1 or parent in where, "the reference kept a node without its parent"
        nodes.append((token, 0 if parent == -1 else where[parent], d, score))
    return nodes, calls


def as_nodes(tree: DraftTree):
    return [(int(t), int(p), int(d), float(s))
            for t, p, d, s in zip(tree.tokens, tree.parents, tree.depth, tree.logp)]


def check_structure(tree: DraftTree, max_nodes: int, draft: SyntheticDraft) -> None:
    tree.validate()
    assert 1 <= tree.size <= max_nodes
    assert np.all(tree.parents[1:] < np.arange(1, tree.size))
    assert tree.info is not None and tree.info.draft_calls == len(draft.calls)
    assert all(r >= 1 for r in draft.calls)
    assert sum(tree.info.nodes_per_layer) == tree.size - 1


@st.composite
def draft_and_k(draw, max_vocab=40):
    vocab = draw(st.integers(1, max_vocab))
    k = draw(st.integers(1, vocab))
    return SyntheticDraft(vocab, k, seed=draw(st.integers(0, 2**16)),
                          sharpness=draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])),
                          peak=draw(st.sampled_from([0.0, 4.0, 12.0])))


@PROPERTY
@given(draft_and_k(), st.integers(1, 90), st.integers(1, 12), st.floats(1e-4, 1.0))
def test_talon_fills_budget_exactly_and_keeps_structure(draft, budget, root_k, mu):
    tree = TalonPolicy(budget=budget, root_k=root_k, mu=mu).build(3, draft)
    check_structure(tree, budget, draft)
    assert tree.size == budget  # the budget is the only stop rule
    assert tree.info.draft_calls == tree.info.layers


@PROPERTY
@given(draft_and_k(), st.integers(1, 90), st.integers(1, 6), st.integers(0, 5))
def test_eagle3_respects_budget_and_keeps_structure(draft, budget, top_k, depth):
    policy = Eagle3Policy(budget=budget, top_k=top_k, depth=depth)
    tree = policy.build(3, draft)
    check_structure(tree, budget, draft)
    if budget > 1:
        assert tree.info.draft_calls == depth + 1


@PROPERTY
@given(draft_and_k(), st.integers(1, 12))
def test_chain_and_ar(draft, depth):
    tree = ChainPolicy(depth=depth).build(3, draft)
    check_structure(tree, depth + 1, draft)
    assert tree.size == depth + 1 and np.array_equal(tree.depth, np.arange(depth + 1))
    assert np.array_equal(tree.tokens[1:], draft.top_ids[:, 0][[draft.context(
        int(tree.tokens[i]), int(tree.tokens[max(i - 1, 0)]), i) for i in range(depth)]])
    calls = []
    assert ArPolicy().build(3, lambda t, r: calls.append(r)).size == 1 and not calls


@PROPERTY
@given(st.integers(0, 2**16), st.integers(2, 8), st.integers(1, 45), st.integers(1, 8),
       st.sampled_from([1e-3, 0.03, 0.1, 0.3, 0.9, 1.0]), st.sampled_from([0.0, 0.5, 2.0]),
       st.sampled_from([0.0, 3.0, 12.0]))
def test_talon_equals_reference(seed, vocab, budget, root_k, mu, sharpness, peak):
    draft = SyntheticDraft(vocab, vocab, seed=seed, sharpness=sharpness, peak=peak)  # k = vocab: full pool
    tree = TalonPolicy(budget=budget, root_k=root_k, mu=mu).build(1, draft)
    nodes, calls = talon_reference(draft, 1, budget, root_k, mu)
    assert as_nodes(tree) == nodes
    assert tree.info.draft_calls == calls


@PROPERTY
@given(st.integers(0, 2**16), st.integers(2, 8), st.integers(1, 70), st.integers(1, 5),
       st.integers(0, 4), st.sampled_from([0.0, 0.5, 2.0]), st.sampled_from([0.0, 3.0, 12.0]))
def test_eagle3_equals_reference(seed, vocab, budget, top_k, depth, sharpness, peak):
    draft = SyntheticDraft(vocab, vocab, seed=seed, sharpness=sharpness, peak=peak)
    policy = Eagle3Policy(budget=budget, top_k=top_k, depth=depth)
    tree = policy.build(1, draft)
    nodes, calls = eagle3_reference(draft, 1, budget, top_k, depth)
    assert as_nodes(tree) == nodes
    assert tree.info.draft_calls == calls


@PROPERTY
@given(st.integers(0, 2**16), st.integers(12, 100))
def test_near_deterministic_draft_gives_deep_narrow_tree_and_flat_draft_shallow_wide(seed, budget):
    policy = TalonPolicy(budget=budget)
    sure = policy.build(0, SyntheticDraft(32, 10, seed=seed, sharpness=0.5, peak=14.0))
    flat = policy.build(0, SyntheticDraft(32, 10, seed=seed, sharpness=0.01))
    # near-deterministic: robust root layer of 10, then one node per layer down to the budget
    assert sure.info.nodes_per_layer == (10,) + (1,) * (budget - 11)
    # flat: everything passes the gate, so the budget is spent on the first two layers
    assert flat.info.nodes_per_layer == ((10, budget - 11) if budget > 11 else (10,))
    assert flat.info.pool_truncated >= 1


def test_talon_budget_below_root_k_truncates_root_layer():
    tree = TalonPolicy(budget=4, root_k=10).build(0, SyntheticDraft(32, 10))
    assert tree.size == 4 and tree.info.draft_calls == 1


def test_expand_sees_tree_built_so_far():
    seen = []
    draft = SyntheticDraft(16, 4, sharpness=0.2)

    def expand(tree, rows):
        tree.validate()
        seen.append((tree.size, rows.copy()))
        return draft(tree, rows)

    tree = TalonPolicy(budget=30, root_k=4).build(0, expand)
    sizes = [s for s, _ in seen]
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[-1] < tree.size
    for size, rows in seen[1:]:
        assert rows.max() == size - 1  # the frontier is the newest layer


def test_make_policy_and_errors():
    assert make_policy("talon", budget=16, mu=0.1) == TalonPolicy(budget=16, mu=0.1)
    assert make_policy("eagle3", top_k=4) == Eagle3Policy(top_k=4)
    assert make_policy("chain", depth=3) == ChainPolicy(depth=3)
    assert make_policy("ar") == ArPolicy()
    with pytest.raises(ValueError, match="policy must be one of ar, chain, eagle3, talon, talon-cost, lookup, "
                                         "talon-lookup, talon-gated, got 'beam'"):
        make_policy("beam")
    with pytest.raises(ValueError, match="no option 'budget'"):
        make_policy("chain", budget=4)
    with pytest.raises(ValueError, match=r"mu must be in \(0, 1\], got 0"):
        TalonPolicy(mu=0)
    with pytest.raises(ValueError, match=r"mu must be in \(0, 1\], got 1.5"):
        TalonPolicy(mu=1.5)
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 0"):
        TalonPolicy(budget=0)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        Eagle3Policy(top_k=0)
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        ChainPolicy(depth=0)


def test_bad_expand_output_is_a_clear_error():
    def expand(tree, rows):
        return np.zeros((len(rows) + 1, 3), dtype=np.int64), np.zeros((len(rows) + 1, 3))

    with pytest.raises(ValueError, match=r"expand: expected ids and logp of shape \(1, k>=1\)"):
        TalonPolicy().build(0, expand)


def test_nan_draft_is_a_clear_error():
    def expand(tree, rows):
        return np.zeros((len(rows), 2), dtype=np.int64), np.full((len(rows), 2), np.nan)

    with pytest.raises(ValueError, match="NaN log-probs at layer 2"):
        TalonPolicy(budget=8).build(0, expand)


@st.composite
def any_policy(draw):
    name = draw(st.sampled_from(["ar", "chain", "eagle3", "talon", "talon-cost", "lookup", "talon-lookup"]))
    if name in ("lookup", "talon-lookup"):
        policy = make_policy(name, budget=draw(st.integers(1, 40)))
        policy.history.reset(draw(st.lists(st.integers(0, 5), min_size=1, max_size=40)))
        return policy
    if name == "chain":
        return ChainPolicy(depth=draw(st.integers(1, 12)))
    if name == "eagle3":
        return Eagle3Policy(budget=draw(st.integers(1, 70)), top_k=draw(st.integers(1, 6)),
                            depth=draw(st.integers(0, 5)))
    if name in ("talon", "talon-cost"):
        talon = TalonPolicy(budget=draw(st.integers(1, 60)), root_k=draw(st.integers(1, 12)),
                            mu=draw(st.sampled_from([1e-3, 0.03, 0.5])))
        if name == "talon":
            return talon
        return make_policy("talon-cost", **asdict(talon),
                           cost=CostModel(tuple(1.0 + draw(st.floats(0.0, 0.05)) * np.arange(64)), draft_base=0.1))
    return ArPolicy()


def rows_written(policy, draft: SyntheticDraft) -> tuple[int, int]:
    """(tree nodes, draft scratch rows) of one build: every draft call after the root's writes scratch."""
    tree = policy.build(3, draft)
    return tree.size, sum(draft.calls[1:])


@PROPERTY
@given(any_policy(), draft_and_k(), st.integers(1, 80))
def test_footprint_bounds_a_round_and_capped_fits_the_room(policy, draft, room):
    target_rows, scratch_rows = policy.footprint()
    nodes, scratch = rows_written(policy, draft)
    assert nodes <= target_rows and scratch <= scratch_rows
    small = policy.capped(room)
    assert max(small.footprint()) <= room
    draft.calls.clear()
    nodes, scratch = rows_written(small, draft)
    assert nodes <= room and scratch <= room
    assert small.learner is policy.learner and small.history is policy.history


def test_only_talon_cost_learns_and_its_learner_is_outside_the_config():
    cost = CostModel(tuple(1.0 + np.arange(16)), draft_base=1.0)
    assert all(make_policy(name).learner is None for name in ("ar", "chain", "eagle3", "talon"))
    a, b = make_policy("talon-cost", budget=16, cost=cost), make_policy("talon-cost", budget=16, cost=cost)
    assert isinstance(a.learner, AcceptanceModel) and a.learner is not b.learner
    assert a.talon == TalonPolicy(budget=16) and a.capped(4).talon == TalonPolicy(budget=4)
    with pytest.raises(ValueError, match="policy 'talon-cost' needs option 'cost'"):
        make_policy("talon-cost", budget=16)
    with pytest.raises(ValueError, match="policy 'talon-cost' has no option 'depth'"):
        make_policy("talon-cost", cost=cost, depth=3)
