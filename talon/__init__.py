"""TALON's algorithm layer: draft-tree policies, tree tensors and verification (numpy only)."""

from talon_rt.talon.cost import AcceptanceModel, CostModel
from talon_rt.talon.gate import DraftGate, GateConfig, GatedPolicy
from talon_rt.talon.lookup import Lookup, LookupConfig
from talon_rt.talon.nodes import Expand
from talon_rt.talon.policies import POLICIES, Knob, PolicySpec, make_policy, policy_spec
from talon_rt.talon.policy import (ArPolicy, ChainPolicy, Eagle3Policy, History, Learner, LookupPolicy, Policy, TalonCostPolicy,
                          TalonLookupPolicy, TalonPolicy)
from talon_rt.talon.penalties import PenaltyContext, Penalties
from talon_rt.talon.sampling import logits_to_probs, sample_token
from talon_rt.talon.tree import BuildInfo, DraftTree, root_tree
from talon_rt.talon.verify import Acceptance, verify_greedy, verify_sample

__all__ = [
    "Acceptance", "AcceptanceModel", "ArPolicy", "BuildInfo", "ChainPolicy", "CostModel", "DraftGate", "GateConfig", "GatedPolicy", "DraftTree", "Eagle3Policy", "Expand",
    "History", "Knob", "Learner", "Lookup", "LookupConfig", "LookupPolicy", "POLICIES", "PenaltyContext", "Penalties", "Policy",
    "PolicySpec", "TalonCostPolicy", "TalonLookupPolicy", "TalonPolicy", "logits_to_probs", "make_policy", "policy_spec", "root_tree",
    "sample_token", "verify_greedy", "verify_sample",
]
