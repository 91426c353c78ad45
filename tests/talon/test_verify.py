"""Verification: greedy follows the longest accepted path; sampling reproduces the target exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from talon_rt.talon import (ArPolicy, ChainPolicy, DraftTree, Eagle3Policy, TalonPolicy, logits_to_probs, make_policy,
                   sample_token, verify_greedy, verify_sample)
from talon_rt.talon.synthetic import SyntheticDraft

PROPERTY = settings(max_examples=500, deadline=None, derandomize=True)


@st.composite
def trees_and_argmax(draw, max_nodes=40, vocab=3):
    """Any tree on a tiny vocabulary (so duplicate siblings and long matches occur) and an argmax."""
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(max(0, i - 6), i - 1)) for i in range(1, n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    argmax = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    tree = DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64),
                     np.array(depth, dtype=np.int64), np.zeros(n))
    return tree, np.array(argmax, dtype=np.int64)


@PROPERTY
@given(trees_and_argmax())
def test_greedy_takes_the_longest_accepted_path_and_the_argmax_bonus(case):
    tree, argmax = case

    def accepted(i: int) -> bool:  # every node on the path matches the argmax at its parent
        while i > 0:
            if tree.tokens[i] != argmax[tree.parents[i]]:
                return False
            i = int(tree.parents[i])
        return True

    longest = max(int(tree.depth[i]) for i in range(tree.size) if accepted(i))
    acc = verify_greedy(tree, argmax)
    last = int(acc.nodes[-1])
    assert acc.accepted == longest and accepted(last) and acc.nodes[0] == 0
    assert all(tree.parents[b] == a for a, b in zip(acc.nodes[:-1], acc.nodes[1:]))
    assert acc.tokens.tolist() == tree.tokens[acc.nodes[1:]].tolist() + [argmax[last]]
    assert acc.bonus == argmax[last]


def test_greedy_example():
    # root -> a(5), b(6); a -> c(7); b -> d(8), e(9); d -> f(1)
    tree = DraftTree(np.array([0, 5, 6, 7, 8, 9, 1]), np.array([-1, 0, 0, 1, 2, 2, 4]),
                     np.array([0, 1, 1, 2, 2, 2, 3]), np.zeros(7))
    argmax = np.array([6, 7, 8, 3, 1, 2, 4])  # root->b, b->d, d->f accepted; bonus at f is 4
    acc = verify_greedy(tree, argmax)
    assert acc.nodes.tolist() == [0, 2, 4, 6] and acc.tokens.tolist() == [6, 8, 1, 4]
    assert verify_greedy(tree, np.array([3, 0, 0, 0, 0, 0, 0])).tokens.tolist() == [3]


def test_verify_checks_shapes():
    tree = DraftTree(np.array([0, 5]), np.array([-1, 0]), np.array([0, 1]), np.zeros(2))
    with pytest.raises(ValueError, match=r"target_argmax: expected 1-D with 2 rows"):
        verify_greedy(tree, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"target_probs: expected 2-D with 2 rows"):
        verify_sample(tree, np.ones((1, 4)), np.random.default_rng(0))


# --- lossless sampling -----------------------------------------------------------------------------

VOCAB = 4  # the tests compare the joint law of the first `emit` tokens: VOCAB**emit cells


class Target:
    """p(next | context) for a token tuple: a seeded random law, some with zeros (top-k filtered)."""

    def __init__(self, seed: int):
        self.seed, self.cache = seed, {}

    def __call__(self, context: tuple[int, ...]) -> np.ndarray:
        if context not in self.cache:
            rng = np.random.default_rng([self.seed, len(context), *context])
            top_k = 3 if context[-1] == 1 else 0  # after token 1, one token is impossible
            self.cache[context] = logits_to_probs(rng.standard_normal(VOCAB), top_k=top_k)
        return self.cache[context]


def dup_tree(context: tuple[int, ...]) -> DraftTree:
    # root -> 2, 2 (duplicate), 0; first 2 -> 3, 3 -> 1: distinct children tried in order
    return DraftTree(np.array([context[-1], 2, 2, 0, 3, 1]), np.array([-1, 0, 0, 0, 1, 4]),
                     np.array([0, 1, 1, 1, 2, 3]), np.zeros(6))


def policy_trees(policy):
    draft = SyntheticDraft(VOCAB, VOCAB, seed=5, sharpness=1.5)
    return lambda context: policy.build(context[-1], draft)


def lookup_trees(name: str):
    """Trees of a lookup policy over a fixed text and the context: a function of the context (point
    masses), with lookup nodes in most of them."""
    draft = SyntheticDraft(VOCAB, VOCAB, seed=5, sharpness=1.5)
    text = [0, 1, 2, 3, 0, 1, 3, 2, 1, 0, 2, 2, 3, 1, 1, 0, 3, 3, 2, 0]

    def make(context: tuple[int, ...]) -> DraftTree:
        policy = make_policy(name, **({"budget": 6} if name == "lookup" else dict(budget=8, root_k=2, mu=0.2)))
        policy.history.reset(text + list(context))
        tree = policy.build(context[-1], draft)
        assert tree.info.lookup, "the lookup proposed nothing"
        return tree
    return make


SHAPES = {
    "ar": policy_trees(ArPolicy()),
    "chain3": policy_trees(ChainPolicy(depth=3)),
    "eagle3": policy_trees(Eagle3Policy(budget=9, top_k=3, depth=2)),
    "talon": policy_trees(TalonPolicy(budget=10, root_k=3, mu=0.2)),
    "duplicates": dup_tree,
    "lookup": lookup_trees("lookup"),
    "talon-lookup": lookup_trees("talon-lookup"),
}


def node_probs(tree: DraftTree, context: tuple[int, ...], target: Target) -> np.ndarray:
    """[n, V]: the target's law after each node; the root is the context's last token."""
    out = np.empty((tree.size, VOCAB))
    for path in tree.paths():
        for j, node in enumerate(path):
            out[node] = target(context + tuple(int(t) for t in tree.tokens[path[1:j + 1]]))
    return out


@pytest.mark.parametrize("shape, emit", [(shape, 2) for shape in SHAPES] + [
    pytest.param(shape, 3, marks=pytest.mark.slow) for shape in SHAPES if shape != "ar"])
def test_sampling_is_lossless(shape, emit):
    make_tree, target = SHAPES[shape], Target(seed=11)
    start, trials = (0,), 100_000
    rounds = {}  # context -> (tree, target probs per node): drafts are functions of the context
    rng = np.random.default_rng(2024)
    counts = np.zeros(VOCAB**emit, dtype=np.int64)
    for _ in range(trials):
        context, emitted = start, []
        while len(emitted) < emit:
            if context not in rounds:
                tree = make_tree(context)
                rounds[context] = tree, node_probs(tree, context, target)
            tree, probs = rounds[context]
            tokens = verify_sample(tree, probs, rng).tokens.tolist()
            emitted += tokens
            context = context + tuple(tokens)
        counts[np.ravel_multi_index(emitted[:emit], (VOCAB,) * emit)] += 1
    expected = np.array([np.prod([target(start + seq[:j])[seq[j]] for j in range(emit)])
                         for seq in itertools.product(range(VOCAB), repeat=emit)]) * trials
    assert counts[expected == 0].sum() == 0
    live = expected > 0
    p = chisquare(counts[live], expected[live] * counts[live].sum() / expected[live].sum()).pvalue
    assert p > 0.01, (shape, p)


def test_sampling_accepts_the_whole_tree_when_target_agrees():
    tree = ChainPolicy(depth=3).build(0, SyntheticDraft(VOCAB, VOCAB, seed=5))
    probs = np.full((tree.size, VOCAB), 1e-12)
    probs[np.arange(tree.size - 1), tree.tokens[1:]] = 1.0
    probs[-1, 2] = 1.0
    acc = verify_sample(tree, probs, np.random.default_rng(0))
    assert acc.nodes.tolist() == [0, 1, 2, 3] and acc.bonus == 2


# --- logits processing -----------------------------------------------------------------------------

def test_logits_to_probs():
    x = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]])
    p = logits_to_probs(x, temperature=0.5)
    ref = np.exp(x / 0.5) / np.exp(x / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, ref)
    assert (logits_to_probs(x, top_k=2)[0] > 0).tolist() == [True, True, False, False]
    assert (logits_to_probs(x, top_k=2)[1] > 0).all()  # ties with the k-th logit stay
    p1 = ref[0] / ref[0].sum()
    kept = logits_to_probs(x[:1], temperature=0.5, top_p=float(p1[0]) + 1e-9)[0]
    assert (kept > 0).tolist() == [True, True, False, False]  # the token crossing top_p stays
    assert (logits_to_probs(x[:1], top_p=1e-6)[0] > 0).tolist() == [True, False, False, False]
    np.testing.assert_allclose(logits_to_probs(x, top_p=0.9, top_k=3).sum(axis=1), 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(top_k=-1), "top_k must be an integer >= 0, got -1"),
])
def test_logits_to_probs_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        logits_to_probs(np.zeros(4), **kwargs)


def test_sample_token_follows_probs():
    rng = np.random.default_rng(3)
    p = np.array([0.1, 0.0, 0.6, 0.3])
    draws = np.bincount([sample_token(p, rng) for _ in range(20_000)], minlength=4)
    assert draws[1] == 0 and chisquare(draws[[0, 2, 3]], 20_000 * p[[0, 2, 3]]).pvalue > 0.01


@PROPERTY
@given(trees_and_argmax(max_nodes=32))
def test_greedy_small_tree_walk_equals_the_vectorised_path(case):
    import talon_rt.talon.verify as tv
    tree, argmax = case
    walk = tv._verify_greedy_small(tree, argmax)
    saved, tv.SMALL_TREE = tv.SMALL_TREE, 0
    try:
        vec = verify_greedy(tree, argmax)
    finally:
        tv.SMALL_TREE = saved
    assert walk.nodes.tolist() == vec.nodes.tolist() and walk.tokens.tolist() == vec.tokens.tolist()
