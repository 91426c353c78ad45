"""DraftTree tensors: the mask is the ancestor closure, positions are depth + past, paths end at leaves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talon_rt.talon import DraftTree, Eagle3Policy, TalonPolicy, root_tree
from talon_rt.talon.synthetic import SyntheticDraft

PROPERTY = settings(max_examples=500, deadline=None, derandomize=True)


@st.composite
def trees(draw, max_nodes=70):
    """Any tree in parents-before-children order: each node hangs under an earlier one."""
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    tokens = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    return DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64),
                     np.array(depth, dtype=np.int64), -np.arange(n, dtype=np.float64))


def ancestors(tree: DraftTree, i: int) -> set[int]:
    out = {i}
    while tree.parents[i] >= 0:
        i = int(tree.parents[i])
        out.add(i)
    return out


def check_tensors(tree: DraftTree, past: int) -> None:
    m = tree.mask()
    assert m.shape == (tree.size, tree.size) and m.dtype == bool
    for i in range(tree.size):
        assert set(np.flatnonzero(m[i]).tolist()) == ancestors(tree, i)
    pos = tree.positions(past)
    assert pos.dtype == np.int64 and np.array_equal(pos, tree.depth + past)
    leaves = sorted(set(range(tree.size)) - set(tree.parents[1:].tolist()))
    paths = tree.paths()
    assert [int(p[-1]) for p in paths] == leaves
    for p in paths:
        assert p[0] == 0 and all(tree.parents[b] == a for a, b in zip(p[:-1], p[1:]))


@PROPERTY
@given(trees(), st.integers(0, 4096))
def test_tensors_of_any_tree(tree, past):
    tree.validate()
    check_tensors(tree, past)


@PROPERTY
@given(st.integers(0, 2**16), st.integers(1, 80), st.booleans(), st.sampled_from([0.0, 1.0, 12.0]))
def test_tensors_of_policy_trees(seed, budget, talon, peak):
    draft = SyntheticDraft(24, 6, seed=seed, peak=peak)
    policy = TalonPolicy(budget=budget, root_k=6) if talon else Eagle3Policy(budget, top_k=4, depth=5)
    check_tensors(policy.build(2, draft), past=seed % 100)


def test_root_only_tree():
    t = root_tree(7)
    assert t.mask().tolist() == [[True]] and t.positions(5).tolist() == [5]
    assert [p.tolist() for p in t.paths()] == [[0]]


def test_validate_names_the_bad_field():
    ok = dict(tokens=np.zeros(3, np.int64), parents=np.array([-1, 0, 0]), depth=np.array([0, 1, 1]),
              logp=np.zeros(3))
    with pytest.raises(ValueError, match="node 2 has parent 2, which does not precede it"):
        DraftTree(**{**ok, "parents": np.array([-1, 0, 2])}).validate()
    with pytest.raises(ValueError, match="DraftTree.depth: node 2 has depth 2"):
        DraftTree(**{**ok, "depth": np.array([0, 1, 2])}).validate()
    with pytest.raises(ValueError, match=r"DraftTree.logp: expected shape \(3,\)"):
        DraftTree(**{**ok, "logp": np.zeros(2)}).validate()
