"""The policy registry: every draft-tree policy's name, knobs, footprint and constructor, in one place.

A policy is a class (talon/policy.py, or a file of its own) plus one `PolicySpec` in `SPECS` below.
Everything else that knows of policies derives from here: the session options and their limit checks
(runtime/options.py), the decoder's policy (runtime/decode.py), the CLI flags, the server's x_talon
fields, the benchmark's configurations, the manifest's defaults and the TensorRT profiles (export/).
docs/design.md §4.7 walks through adding one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Protocol

from talon_rt.talon.cost import AcceptanceModel
from talon_rt.talon.gate import GatedPolicy
from talon_rt.talon.lookup import Lookup, LookupConfig
from talon_rt.talon.policy import (ArPolicy, ChainPolicy, Eagle3Policy, LookupPolicy, Policy, TalonCostPolicy,
                          TalonLookupPolicy, TalonPolicy)

AR, CHAIN, EAGLE3, TALON = "ar", "chain", "eagle3", "talon"
TALON_COST, LOOKUP, TALON_LOOKUP = "talon-cost", "lookup", "talon-lookup"
TALON_GATED = "talon-gated"
DEFAULT = TALON    # the session's policy when neither the caller nor the manifest names one: the paper's
BASELINE = AR      # target-only engines' policy and the reference every speed-up is measured against
ENGINE_DEFAULT = TALON_GATED   # what an exported engine's manifest names: drafts only while drafting pays


class Limits(Protocol):
    """The engine limits a policy's round must fit (talon_rt.runtime.manifest.Limits)."""

    max_tree_tokens: int
    max_prefill_chunk: int
    max_seq_len: int


@dataclass(frozen=True)
class Knob:
    """A policy option of a session: a talon_rt.runtime.options.Options field, a CLI flag, an x_talon field and
    a manifest default, passed to the policy's constructor as `keyword`."""

    option: str
    keyword: str
    kind: type          # int or float
    default: int | float
    why: str            # the reason for the default
    help: str           # what the value means (the CLI flag's help, after the policies that read it)


BUDGET = Knob("budget", "budget", int, 16,
              "N=60 is the paper's H200 value; CPUs want less (docs/design.md §7), the bench sweeps it",
              "tree nodes incl. the root (<= limits.max_tree_tokens)")
MU = Knob("mu", "mu", float, 0.03, "the paper's gate: keep paths within 3 % of the layer's best path",
          "relative score threshold in (0, 1]")
ROOT_K = Knob("root_k", "root_k", int, 10, "the paper's K: robust initialisation with the root's top-10",
              "children of the root")
EAGLE3_TOP_K = Knob("eagle3_top_k", "top_k", int, 10, "EAGLE-2/3 topK_genrate's default", "beam width")
EAGLE3_DEPTH = Knob("eagle3_depth", "depth", int, 7, "EAGLE-3's default: 8 draft calls incl. the root's",
                    "expansions after the root's call")
CHAIN_DEPTH = Knob("chain_depth", "depth", int, 4,
                   "at the trial head's ~0.7 acceptance per step a 5th draft is reached < 25 % of rounds",
                   "draft tokens per round")
KNOBS = (BUDGET, MU, ROOT_K, EAGLE3_TOP_K, EAGLE3_DEPTH, CHAIN_DEPTH)
KNOB_NAMES = tuple(k.option for k in KNOBS)
LOOKUP_OPTIONS = tuple(f.name for f in fields(LookupConfig))


@dataclass(frozen=True)
class PolicySpec:
    """One policy: what it reads, what it needs from the engine and how it is built."""

    name: str
    label: str                                  # one line: what the policy does
    cls: type                                   # the class `make` returns
    make: Callable[..., Policy]                 # the policy from its constructor keywords
    knobs: tuple[Knob, ...] = ()                # the session options it reads
    extra: tuple[str, ...] = ()                 # constructor keywords beyond the knobs' (make_policy only)
    footprint: Callable[[Mapping[str, Any]], tuple[int, int]] = lambda v: (1, 0)
    fits: Callable[[Mapping[str, Any], Limits], str | None] = lambda v, lim: None
    needs_head: bool = True                     # drafts with an EAGLE-3 head (else: no draft buffers or feed)
    needs_cost: bool = False                    # takes the engine's measured CostModel (`cost`)
    reads_text: bool = False                    # drafts from the text so far (a Lookup index)
    baseline: bool = False                      # a published method the project compares against

    def keywords(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor keywords from session option values (by option name)."""
        return {k.keyword: values[k.option] for k in self.knobs}


def _chain_fits(v: Mapping[str, Any], lim: Limits) -> str | None:
    if _chain_footprint(v)[0] > lim.max_tree_tokens:   # a chain round verifies depth + 1 tokens in one call
        return (f"option chain_depth: {v['chain_depth']} above limits.max_tree_tokens - 1 = "
                f"{lim.max_tree_tokens - 1}")
    return None


def _eagle3_fits(v: Mapping[str, Any], lim: Limits) -> str | None:
    q_max = max(lim.max_tree_tokens, lim.max_prefill_chunk)
    if v["eagle3_top_k"] > q_max:   # one draft call expands top_k rows
        return (f"option eagle3_top_k: {v['eagle3_top_k']} above the largest call of this engine, "
                f"max(limits.max_tree_tokens, limits.max_prefill_chunk) = {q_max}")
    if v["eagle3_depth"] > lim.max_tree_tokens - 1:   # no node deeper than budget - 1 can be kept
        return (f"option eagle3_depth: {v['eagle3_depth']} above limits.max_tree_tokens - 1 = "
                f"{lim.max_tree_tokens - 1}")
    scratch = v["eagle3_top_k"] * v["eagle3_depth"]
    if scratch > lim.max_seq_len - 1:   # the draft writes top_k scratch rows per layer after the committed ones
        return (f"options eagle3_top_k x eagle3_depth: {scratch} draft scratch rows above "
                f"limits.max_seq_len - 1 = {lim.max_seq_len - 1}")
    return None


# (target rows, draft scratch rows) a round writes past the committed cache: the policies' footprint()
def _chain_footprint(v: Mapping[str, Any]) -> tuple[int, int]:
    return v["chain_depth"] + 1, v["chain_depth"] - 1   # the first call appends the feed, not scratch


def _eagle3_footprint(v: Mapping[str, Any]) -> tuple[int, int]:
    return v["budget"], (v["eagle3_depth"] * v["eagle3_top_k"] if v["budget"] > 1 else 0)


def _talon_footprint(v: Mapping[str, Any]) -> tuple[int, int]:
    return v["budget"], v["budget"] - 1


def _lookup_footprint(v: Mapping[str, Any]) -> tuple[int, int]:
    return v["budget"], 0


def _talon_cost(cost, **talon) -> TalonCostPolicy:
    return TalonCostPolicy(TalonPolicy(**talon), cost, AcceptanceModel())


def _talon_gated(**options) -> GatedPolicy:
    """The root alone, the lookup alone and talon-lookup (one shared index), the gate choosing per round;
    seeded sampling takes the lookup's rounds (they depend on the text alone, so a seed repeats)."""
    tree = _talon_lookup(**options)
    return GatedPolicy([None, LookupPolicy(tree.talon.budget, tree.history), tree], seeded_arm=1)


def _index(options: dict[str, Any]) -> Lookup:
    """A fresh Lookup index from (and without) the LookupConfig fields among `options`."""
    return Lookup(LookupConfig(**{k: options.pop(k) for k in LOOKUP_OPTIONS if k in options}))


def _lookup(**options) -> LookupPolicy:
    return LookupPolicy(lookup=_index(options), **options)


def _talon_lookup(**options) -> TalonLookupPolicy:
    index = _index(options)
    skip = {"skip": options.pop("skip")} if "skip" in options else {}
    return TalonLookupPolicy(TalonPolicy(**options), index, **skip)


_TALON_KNOBS = (BUDGET, ROOT_K, MU)
SPECS: dict[str, PolicySpec] = {s.name: s for s in (
    PolicySpec(AR, "no draft: the root alone, the autoregressive baseline through the same loop", ArPolicy,
               ArPolicy, needs_head=False, baseline=True),
    PolicySpec(CHAIN, "classic speculative decoding: the draft's top-1 token, depth times", ChainPolicy,
               ChainPolicy, (CHAIN_DEPTH,), footprint=_chain_footprint, fits=_chain_fits, baseline=True),
    PolicySpec(EAGLE3, "EAGLE-2/3's topK_genrate: a beam of top_k parents per layer, then a global rerank",
               Eagle3Policy, Eagle3Policy, (BUDGET, EAGLE3_TOP_K, EAGLE3_DEPTH), footprint=_eagle3_footprint,
               fits=_eagle3_fits, baseline=True),
    PolicySpec(TALON, "TALON, the paper's Algorithm 2: a budget-driven adaptive tree with confidence gating",
               TalonPolicy, TalonPolicy, _TALON_KNOBS, footprint=_talon_footprint),
    PolicySpec(TALON_COST, "TALON with the cost-aware stop and size, the budget its cap",
               TalonCostPolicy, _talon_cost, _TALON_KNOBS, ("cost",), footprint=_talon_footprint,
               needs_cost=True),
    PolicySpec(LOOKUP, "context lookup alone: no draft head, one target call a round",
               LookupPolicy, _lookup, (BUDGET,), LOOKUP_OPTIONS, footprint=_lookup_footprint,
               needs_head=False, reads_text=True),
    PolicySpec(TALON_LOOKUP, "TALON with the context lookup's continuations in its candidate pool",
               TalonLookupPolicy, _talon_lookup, _TALON_KNOBS, (*LOOKUP_OPTIONS, "skip"),
               footprint=_talon_footprint, reads_text=True),
    PolicySpec(TALON_GATED, "a measured gate (talon/gate.py) choosing per round among ar, lookup and "
               "talon-lookup: the head is called only while its rounds emit the most tokens per second",
               GatedPolicy, _talon_gated,
               _TALON_KNOBS, (*LOOKUP_OPTIONS, "skip"), footprint=_talon_footprint, reads_text=True),
)}
NAMES = tuple(SPECS)
POLICIES: dict[str, type] = {name: s.cls for name, s in SPECS.items()}
HEADLESS = tuple(name for name, s in SPECS.items() if not s.needs_head)


def policy_spec(name: str) -> PolicySpec:
    """The spec of policy `name`; ValueError listing the known names if there is none."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"policy must be one of {', '.join(NAMES)}, got {name!r}")
    return spec


def make_policy(name: str, **options) -> Policy:
    """A policy by name with its constructor keywords as options (`PolicySpec.knobs` and `extra`):
    talon-cost takes talon's and `cost` (the engine's CostModel) and learns from a fresh
    AcceptanceModel; lookup takes `budget` and the LookupConfig fields, talon-lookup talon's, the
    LookupConfig fields and `skip`; both start a fresh Lookup index."""
    spec = policy_spec(name)
    allowed = {k.keyword for k in spec.knobs} | set(spec.extra)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"policy {name!r} has no option {unknown[0]!r} "
                         f"(options: {', '.join(sorted(allowed)) or 'none'})")
    if spec.needs_cost and options.get("cost") is None:
        raise ValueError(f"policy {name!r} needs option 'cost' (the engine's measured CostModel)")
    return spec.make(**options)


def policy_from_options(name: str, values: Mapping[str, Any], cost: Any = None) -> Policy:
    """Policy `name` from session option values (by option name, e.g. talon_rt.runtime.options.Options);
    `cost`: the engine's CostModel, for a policy that needs one."""
    spec = policy_spec(name)
    return make_policy(name, **spec.keywords(values), **({"cost": cost} if spec.needs_cost else {}))
