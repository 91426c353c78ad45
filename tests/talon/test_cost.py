"""The cost-aware extension (talon/cost.py): cost model, acceptance calibration, and the trees it sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talon_rt.talon import AcceptanceModel, CostModel, TalonCostPolicy, TalonPolicy, make_policy
from talon_rt.talon.synthetic import SyntheticDraft

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)
FREE = CostModel(verify=(1.0,) * 64, draft_base=0.0)


def test_cost_model_checks_and_shapes():
    with pytest.raises(ValueError, match="verify costs must be positive"):
        CostModel(verify=(1.0, -2.0), draft_base=0.0)
    with pytest.raises(ValueError, match="draft_base must be a finite number >= 0"):
        CostModel(verify=(1.0,), draft_base=math.nan)
    m = CostModel(verify=(5.0, 9.0, 7.0, 8.0), draft_base=1.0)
    assert m.verify == (5.0, 7.0, 7.0, 8.0)   # a spike above a later cost is lowered
    m = CostModel.from_points({1: 100.0, 4: 160.0, 8: 200.0}, 10, draft_base=30.0, draft_row=2.0)
    assert m.verify[0] == 100.0 and m.verify[3] == 160.0 and m.verify[1] == pytest.approx(120.0)
    assert m.verify[9] == pytest.approx(220.0)   # extrapolated with the last segment's slope
    assert m.slope == pytest.approx((220.0 - 100.0) / 9)
    assert m.draft_call(5) == 40.0
    with pytest.raises(ValueError, match="cost model covers trees of up to 10 nodes, budget is 16"):
        TalonCostPolicy(TalonPolicy(budget=16), m)


def test_acceptance_model_learns_greedy_outcomes():
    a = AcceptanceModel(prior=2.0)
    fresh = np.exp(a.log_accept(np.log([0.5]), np.array([0]), 1))[0]
    assert fresh == pytest.approx(0.55)            # the prior: the 0.4-0.7 bin's own centre
    # a tree root -> (n1 -> n3), n2; the draft had expanded the root (children 7, 8, 9) and n1 (4, 5)
    parents = np.array([-1, 0, 0, 1])
    depth = np.array([0, 1, 1, 2])
    logp = np.log([1.0, 0.5, 0.3, 0.25])
    for _ in range(40):
        a.expanded([(np.array([0]), np.array([[7, 8, 9]]), np.log([[0.5, 0.3, 0.1]])),
                    (np.array([1]), np.array([[4, 5, 6]]), np.log([[0.5, 0.2, 0.1]]))], np.arange(4))
        # the path root -> n1; the target chose 7 after the root and 5 (the draft's second) after n1
        a.update(parents, depth, logp, np.array([0, 1]), target_tokens=np.array([7, 5]))
    best_d1 = np.exp(a.log_accept(np.log([0.5]), np.array([0]), 1))[0]
    best_d2 = np.exp(a.log_accept(np.log([0.5]), np.array([0]), 2))[0]
    second_d2 = np.exp(a.log_accept(np.log([0.2]), np.array([1]), 2))[0]
    assert best_d1 > 0.9 and best_d2 < 0.1 and second_d2 > 0.9


def test_acceptance_model_without_target_tokens_counts_tree_nodes():
    a = AcceptanceModel(prior=1.0)
    parents, depth = np.array([-1, 0, 0]), np.array([0, 1, 1])
    logp = np.log([1.0, 0.5, 0.3])
    for _ in range(30):
        a.update(parents, depth, logp, np.array([0, 2]))     # the second child accepted, not the first
    assert np.exp(a.log_accept(np.log([0.5]), np.array([0]), 1))[0] < 0.1
    assert np.exp(a.log_accept(np.log([0.3]), np.array([1]), 1))[0] > 0.9


def test_rate_is_a_moving_ratio():
    a = AcceptanceModel()
    assert a.rate == 0.0
    for _ in range(200):
        a.record_round(3, 1500.0)
    assert a.rate == pytest.approx(3 / 1500.0)


@PROPERTY
@given(seed=st.integers(0, 10_000), budget=st.integers(1, 40), root_k=st.integers(1, 12),
       mu=st.sampled_from([0.01, 0.03, 0.2, 1.0]), peak=st.floats(0.0, 6.0))
def test_free_engine_calls_give_the_paper_tree(seed, budget, root_k, mu, peak):
    """With verify and draft calls free every node pays: the extension builds TALON's own tree."""
    draft = SyntheticDraft(vocab=50, k=8, seed=seed, peak=peak)
    paper = TalonPolicy(budget=budget, root_k=root_k, mu=mu).build(3, draft)
    costed = TalonCostPolicy(TalonPolicy(budget=budget, root_k=root_k, mu=mu), FREE).build(3, draft)
    for field in ("tokens", "parents", "depth"):
        np.testing.assert_array_equal(getattr(costed, field), getattr(paper, field))


@PROPERTY
@given(seed=st.integers(0, 10_000), budget=st.integers(2, 40), peak=st.floats(0.0, 6.0),
       slope=st.floats(0.0, 400.0), draft=st.floats(0.0, 2000.0), learned=st.booleans())
def test_costed_trees_are_valid_and_pay(seed, budget, peak, slope, draft, learned):
    verify = tuple(700.0 + slope * np.arange(64))
    cost = CostModel(verify=verify, draft_base=draft, draft_row=5.0)
    acceptance = AcceptanceModel() if learned else None
    if acceptance is not None:
        acceptance.record_round(2, 1000.0)
    expand = SyntheticDraft(vocab=50, k=8, seed=seed, peak=peak)
    policy = TalonCostPolicy(TalonPolicy(budget=budget), cost, acceptance)
    tree = policy.build(3, expand)
    tree.validate()
    assert tree.size <= budget
    rate = acceptance.rate if acceptance is not None else 1.0 / (draft + 5.0 + verify[0])
    need = rate * cost.slope
    if tree.size > 1 and need > 0:
        # every kept node's (draft) path probability beats what its verify time is worth
        if acceptance is None:
            assert np.exp(tree.logp[1:]).min() >= need * (1 - 1e-9)
    assert tree.info is not None and tree.info.draft_calls >= 1


def test_expensive_verify_keeps_the_root_alone():
    cost = CostModel(verify=tuple(1.0 + 1e6 * np.arange(16)), draft_base=0.0)
    tree = TalonCostPolicy(TalonPolicy(budget=16), cost).build(3, SyntheticDraft(vocab=50, k=8, seed=1, peak=5.0))
    assert tree.size == 1 and tree.info.draft_calls == 1


def test_confident_draft_and_cheap_verify_go_deep():
    cost = CostModel(verify=tuple(700.0 + 10.0 * np.arange(32)), draft_base=20.0)
    tree = TalonCostPolicy(make_policy("talon", budget=32), cost).build(3, SyntheticDraft(vocab=50, k=8, seed=2, peak=8.0))
    assert tree.depth.max() >= 5
