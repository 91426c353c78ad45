"""The draft gate (talon/gate.py): it drafts while drafting pays, probes rarely while it does not, and
a gated round is the root alone with no draft call."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.talon.gate import DraftGate, GateConfig, GatedPolicy
from talon_rt.talon.policy import TalonPolicy


def simulate(gate: DraftGate, rounds: int, draft_time: float, draft_tokens: float, plain_time: float = 1.0,
             seed: int = 0) -> np.ndarray:
    """Run the gate for `rounds` rounds with noisy times; return which rounds drafted."""
    rng = np.random.default_rng(seed)
    drafted = np.zeros(rounds, np.bool_)
    for i in range(rounds):
        d = gate.drafts()
        drafted[i] = d
        noise = 1 + 0.05 * rng.standard_normal()
        if d:
            gate.record(True, int(rng.random() < draft_tokens - 1) + 1, draft_time * noise)
        else:
            gate.record(False, 1, plain_time * noise)
    return drafted


def test_a_draft_that_loses_is_probed_rarely():
    # a drafted round costs 1.3x and emits 1.13 tokens: 0.87x a plain round's rate
    drafted = simulate(DraftGate(), 2000, draft_time=1.3, draft_tokens=1.13)
    assert drafted[:3].all()                       # warm-up
    late = drafted[500:].mean()
    # probes at the capped interval, and the few drafted rounds after a probe that got lucky
    assert late <= 0.05, late
    # what drafting cost against always-plain: the time drafted rounds lost per plain-round time
    assert late * (1.3 - 1.13) < 0.01


def test_a_draft_that_pays_keeps_drafting():
    drafted = simulate(DraftGate(), 2000, draft_time=1.2, draft_tokens=1.8)
    assert drafted[100:].mean() >= 1 - 1 / 32 - 0.01   # plain only for the refresh rounds


def test_the_gate_reopens_when_the_text_turns_predictable():
    gate = DraftGate()
    before = simulate(gate, 600, draft_time=1.3, draft_tokens=1.05)
    assert before[300:].mean() < 0.03
    after = simulate(gate, 800, draft_time=1.3, draft_tokens=2.5, seed=1)
    assert after[:64 + 2].any()                   # the next probe comes within the interval's cap
    # a few probes move the averages past the reopening margin; then it drafts but for the refreshes
    opened = int(np.flatnonzero(after[1:] & after[:-1])[0])
    assert opened < 6 * 64, opened               # ~5 probes at the capped interval
    assert after[opened + 64:].mean() > 0.9


def test_a_closed_round_makes_no_draft_call():
    calls = []

    def expand(tree, rows):
        calls.append(rows)
        return np.array([[5, 6]]), np.log(np.array([[0.9, 0.1]]))

    policy = GatedPolicy(TalonPolicy(budget=2, root_k=2, mu=0.3), DraftGate(GateConfig(warmup=1)))
    tree = policy.build(7, expand)
    assert tree.size == 2 and len(calls) == 1
    policy.learner.record_round(1, 10.0)          # a drafted round that emitted one token in 10
    tree = policy.build(7, expand)                 # no plain time yet: a plain round to measure it
    assert tree.size == 1 and len(calls) == 1 and tree.tokens.tolist() == [7]
    policy.learner.record_round(1, 5.0)            # plain rounds are twice as fast: drafting loses
    sizes = [policy.build(7, expand).size for _ in range(3)]
    assert sizes == [1, 1, 1] and len(calls) == 1


def test_capped_policies_share_the_gate():
    policy = GatedPolicy(TalonPolicy(budget=8))
    capped = policy.capped(3)
    assert capped.gate is policy.gate and capped.learner is policy.learner
    assert capped.footprint() == TalonPolicy(budget=8).capped(3).footprint()


@pytest.mark.parametrize("bad", [{"warmup": 0}, {"probe": 8, "max_probe": 4}, {"decay": 1.0}, {"refresh": True}])
def test_bad_gate_config_is_refused(bad):
    with pytest.raises(ValueError, match="gate:"):
        GateConfig(**bad)
