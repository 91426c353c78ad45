"""The policy registry (talon/policies.py): one spec per policy, and what the rest derives from it."""
from __future__ import annotations

import pytest

from talon_rt.talon import CostModel, POLICIES, make_policy, policy_spec
from talon_rt.talon.policies import BUDGET, DEFAULT, HEADLESS, KNOBS, NAMES, SPECS, policy_from_options

COST = CostModel(tuple(700.0 + 75.0 * i for i in range(64)), draft_base=150.0, draft_row=5.0)


def values(**over) -> dict:
    return {**{k.option: k.default for k in KNOBS}, **over}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("over", [{}, {"budget": 1}, {"budget": 5, "eagle3_top_k": 3, "eagle3_depth": 2,
                                                       "chain_depth": 1}, {"budget": 33, "chain_depth": 9}])
def test_spec_footprint_is_the_policys(name, over):
    v = values(**over)
    policy = policy_from_options(name, v, COST)
    assert isinstance(policy, SPECS[name].cls)
    assert SPECS[name].footprint(v) == policy.footprint()


def test_specs_agree_with_the_policies():
    assert tuple(POLICIES) == NAMES and DEFAULT in NAMES and BUDGET in policy_spec(DEFAULT).knobs
    assert HEADLESS == ("ar", "lookup")
    for spec in SPECS.values():
        assert spec.label and spec.name == policy_spec(spec.name).name
        assert policy_from_options(spec.name, values(), COST).history is not None or not spec.reads_text
        assert all(k.why and k.help for k in spec.knobs)
    with pytest.raises(ValueError, match="policy 'talon-cost' needs option 'cost'"):
        policy_from_options("talon-cost", values())


def test_lookup_by_name_lists_the_known_names():
    with pytest.raises(ValueError, match="policy must be one of ar, chain, eagle3, talon, talon-cost, lookup, "
                                         "talon-lookup, talon-gated, got 'beam'"):
        policy_spec("beam")
    assert make_policy("chain", depth=2).footprint() == (3, 1)


def test_every_knob_is_a_session_option_with_its_default():
    from talon_rt.runtime.options import Options
    assert all(getattr(Options(), k.option) == k.default for k in KNOBS)
    assert Options().policy == DEFAULT
