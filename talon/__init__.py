"""TALON's algorithm layer: draft-tree policies, tree tensors and verification (numpy only)."""

from talon.cost import AcceptanceModel, CostModel
from talon.gate import DraftGate, GateConfig, GatedPolicy
from talon.lookup import Lookup, LookupConfig
from talon.nodes import Expand
from talon.policies import POLICIES, Knob, PolicySpec, make_policy, policy_spec
from talon.policy import (ArPolicy, ChainPolicy, Eagle3Policy, History, Learner, LookupPolicy, Policy, TalonCostPolicy,
                          TalonLookupPolicy, TalonPolicy)
from talon.penalties import PenaltyContext, Penalties
from talon.sampling import logits_to_probs, sample_token
from talon.tree import BuildInfo, DraftTree, root_tree
from talon.verify import Acceptance, verify_greedy, verify_sample

__all__ = [
    "Acceptance", "AcceptanceModel", "ArPolicy", "BuildInfo", "ChainPolicy", "CostModel", "DraftGate", "GateConfig", "GatedPolicy", "DraftTree", "Eagle3Policy", "Expand",
    "History", "Knob", "Learner", "Lookup", "LookupConfig", "LookupPolicy", "POLICIES", "PenaltyContext", "Penalties", "Policy",
    "PolicySpec", "TalonCostPolicy", "TalonLookupPolicy", "TalonPolicy", "logits_to_probs", "make_policy", "policy_spec", "root_tree",
    "sample_token", "verify_greedy", "verify_sample",
]
