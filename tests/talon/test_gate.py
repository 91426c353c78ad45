"""The gate (talon/gate.py): each round is built by the arm with the most tokens per second, the
others are probed rarely, and a round of an arm without the head makes no draft call."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.talon.gate import DraftGate, GateConfig, GatedPolicy
from talon_rt.talon.policies import make_policy
from talon_rt.talon.policy import TalonPolicy


def simulate(gate: DraftGate, rounds: int, costs: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Run the gate for `rounds` rounds; arm a's round takes costs[a][0] (5 % noise) and emits
    costs[a][1] tokens on average (1 + a Bernoulli of the rest). Returns each round's arm."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(rounds, np.int64)
    for i in range(rounds):
        arm = gate.choose()
        chosen[i] = arm
        time, tokens = costs[arm]
        extra = tokens - 1
        emitted = 1 + int(extra) + int(rng.random() < extra - int(extra))
        gate.record(arm, emitted, time * (1 + 0.05 * rng.standard_normal()))
    return chosen


def test_a_draft_that_loses_is_probed_rarely():
    # the drafted arm costs 1.3x and emits 1.13 tokens: 0.87x the plain arm's rate
    chosen = simulate(DraftGate(2), 3000, [(1.0, 1.0), (1.3, 1.13)])
    assert (chosen[:3] == 1).all()                  # warm-up, dearest first
    late = (chosen[500:] == 1).mean()
    assert late <= 0.03, late                       # probes at the capped interval, and the odd lucky one
    assert late * (1.3 - 1.13) < 0.01               # what drafting cost against always-plain


def test_a_draft_that_pays_keeps_drafting():
    chosen = simulate(DraftGate(2), 2000, [(1.0, 1.0), (1.2, 1.8)])
    assert (chosen[100:] == 1).mean() >= 1 - 1 / 32


def test_the_best_of_three_arms_wins():
    # root alone, the lookup (a little dearer, more tokens), the head (dearest, fewer than it costs)
    chosen = simulate(DraftGate(3), 3000, [(1.0, 1.0), (1.1, 1.3), (1.4, 1.2)])
    assert (chosen[500:] == 1).mean() > 0.85        # the rest: the root alone after a noisy dip, and probes


def test_the_gate_switches_when_the_text_turns_predictable():
    gate = DraftGate(2)
    before = simulate(gate, 600, [(1.0, 1.0), (1.3, 1.05)])
    assert (before[300:] == 1).mean() < 0.03
    after = simulate(gate, 800, [(1.0, 1.0), (1.3, 2.5)], seed=1)
    drafted = np.flatnonzero((after[1:] == 1) & (after[:-1] == 1))
    assert drafted.size and drafted[0] < 6 * 64, drafted[:3]   # a few probes at the capped interval
    assert (after[drafted[0] + 64:] == 1).mean() > 0.9


def test_a_plain_round_makes_no_draft_call():
    calls = []

    def expand(tree, rows):
        calls.append(rows)
        return np.array([[5, 6]]), np.log(np.array([[0.9, 0.1]]))

    policy = GatedPolicy([None, TalonPolicy(budget=2, root_k=2, mu=0.3)], DraftGate(2, GateConfig(warmup=1)))
    tree = policy.build(7, expand)                  # warm-up: the dearest arm first
    assert tree.size == 2 and len(calls) == 1
    policy.learner.record_round(1, 10.0)            # it emitted one token in 10
    tree = policy.build(7, expand)                  # then the root alone
    assert tree.size == 1 and len(calls) == 1 and tree.tokens.tolist() == [7]
    policy.learner.record_round(1, 5.0)             # twice as fast: drafting loses
    sizes = [policy.build(7, expand).size for _ in range(3)]
    assert sizes == [1, 1, 1] and len(calls) == 1


def test_the_lookup_arm_drafts_from_the_shared_index():
    policy = make_policy("talon-gated", budget=4, root_k=2, mu=0.3)
    assert isinstance(policy, GatedPolicy) and policy.arms[0] is None
    assert policy.history is policy.arms[1].history is policy.arms[2].history
    policy.history.reset([5, 6, 7, 8, 5, 6, 7])     # "5 6 7" seen before: 8 follows
    policy.gate.choose = lambda: 1
    tree = policy.build(7, lambda tree, rows: pytest.fail("the lookup arm called the draft head"))
    assert tree.tokens.tolist()[:2] == [7, 8] and tree.info.draft_calls == 0


def test_capped_policies_share_the_gate():
    policy = GatedPolicy([None, TalonPolicy(budget=8)])
    capped = policy.capped(3)
    assert capped.gate is policy.gate and capped.learner is policy.learner
    assert capped.footprint() == TalonPolicy(budget=8).capped(3).footprint()


@pytest.mark.parametrize("bad", [{"warmup": 0}, {"probe": 8, "max_probe": 4}, {"decay": 1.0}, {"margin": -0.1},
                                 {"probe": True}])
def test_bad_gate_config_is_refused(bad):
    with pytest.raises(ValueError, match="gate:"):
        GateConfig(**bad)


def test_arms_and_policies_must_agree():
    with pytest.raises(ValueError, match="gate over 3 arms, 2 policies given"):
        GatedPolicy([None, TalonPolicy()], DraftGate(3))


def test_seeded_sampling_pins_the_text_only_arm():
    policy = make_policy("talon-gated", budget=4, root_k=2, mu=0.3)
    assert policy.seeded_arm == 1
    policy.seeded(True)
    assert {policy.capped(3).gate.choose() for _ in range(5)} == {1}
    policy.seeded(False)
    assert policy.gate.choose() == 2                  # warm-up again: the dearest arm first
