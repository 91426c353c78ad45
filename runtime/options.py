"""Generation and session options: defined once, typed, validated against the engine's limits.

Any option left out takes the manifest's `defaults`, then the fallback below. max_new_tokens -1
(UNTIL_STOP) resolves to limits.max_seq_len + 1, a count the context always stops first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from talon_rt.runtime.errors import OptionError
from talon_rt.runtime.manifest import MANIFEST, Manifest
from talon_rt.talon.policies import (BASELINE, BUDGET, CHAIN_DEPTH, DEFAULT, EAGLE3_DEPTH, EAGLE3_TOP_K, HEADLESS, KNOBS, MU,
                            NAMES, ROOT_K, policy_spec)

# the policies by name (talon/policies.py is the registry: knobs, footprints, constructors)
POLICIES = NAMES
BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt")
# How the target and draft sessions share the CPU (docs/design.md §7: two spinning pools fight on 2 cores).
THREAD_MODES = ("runspin", "nospin", "shared", "spin")
# max_new_tokens: no limit but the end of the turn (a stop id) and the context (limits.max_seq_len)
UNTIL_STOP = -1


@dataclass(frozen=True)
class Options:
    # the policy and its knobs: defaults and their reasons in talon/policies.py
    policy: str = DEFAULT
    budget: int = BUDGET.default
    mu: float = MU.default
    root_k: int = ROOT_K.default
    eagle3_top_k: int = EAGLE3_TOP_K.default
    eagle3_depth: int = EAGLE3_DEPTH.default
    chain_depth: int = CHAIN_DEPTH.default
    max_new_tokens: int = UNTIL_STOP  # until a stop id or a full context, as llama.cpp's `-n -1`
    temperature: float = 0.0       # 0 = greedy
    top_p: float = 1.0             # 1 = off
    top_k: int = 0                 # 0 = off
    min_p: float = 0.0             # 0 = off; keeps tokens with p >= min_p * p(most likely), after top-p
    repetition_penalty: float = 1.0   # 1 = off; CTRL/HF: a seen token's logit / r if > 0, else * r
    frequency_penalty: float = 0.0    # 0 = off; OpenAI: logit -= f * times the token was generated
    presence_penalty: float = 0.0     # 0 = off; OpenAI: logit -= p once the token was generated
    seed: int | None = None        # None = nondeterministic sampling
    backend: str = "auto"          # tensorrt if plans + GPU, else ort-cuda if available, else ort-cpu
    threads: int = 0               # intra-op threads per session; 0 = ORT's choice (all cores)
    thread_mode: str = "runspin"   # measured fastest on 2 cores (see runtime/backends/ort.py)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options))
# fixed when an engine's sessions are opened; the others may change per generation (Generator.with_options)
SESSION_OPTIONS = ("backend", "threads", "thread_mode")
# what the target's logits go through in verification (talon/penalties.py, talon/sampling.py); a
# generate call may set these for itself (Generator.generate)
SAMPLING_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty",
                    "presence_penalty", "seed")
PENALTY_RANGE = 2.0
# the policies' knobs by kind, budget first (it alone is bounded by the engine's limits.max_tree_tokens)
KNOB_INTS = tuple(k.option for k in KNOBS if k.kind is int)
KNOB_FLOATS = tuple(k.option for k in KNOBS if k.kind is float)                # frequency and presence penalties lie in [-2, 2], as OpenAI's


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise OptionError(f"option {name}: expected {'a number' if kind is float else 'an integer'}, "
                          f"got {value!r}")
    try:
        number = kind(value)
    except OverflowError:
        raise OptionError(f"option {name}: {value!r} is not a finite number") from None
    if kind is float and not math.isfinite(number):
        raise OptionError(f"option {name}: {value!r} is not a finite number")
    return number


def cpu_count() -> int:
    """CPUs this machine has (the bound of `threads`)."""
    return os.cpu_count() or 1


def check_defaults(manifest: Manifest) -> None:
    """The manifest's `defaults` must be valid options for this engine (and machine): OptionError
    saying the value came from the manifest if not (whatever options a caller passes)."""
    values = {k: v for k, v in manifest.defaults.items() if k in OPTION_NAMES and v is not None}
    try:
        validate(manifest, Options(**values))
    except OptionError as e:
        raise OptionError(f"{e} (a value from the defaults of {manifest.dir / MANIFEST})") from None


def resolve_options(manifest: Manifest, overrides: Mapping[str, Any]) -> Options:
    """Options from the manifest defaults overlaid with `overrides` (None = not given)."""
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown}; known: {', '.join(OPTION_NAMES)}")
    values: dict[str, Any] = {}
    for name in OPTION_NAMES:
        if overrides.get(name) is not None:
            values[name] = overrides[name]
        elif name in manifest.defaults and manifest.defaults[name] is not None:
            values[name] = manifest.defaults[name]
    if manifest.draft is None:
        values.setdefault("policy", BASELINE)   # a target-only engine has nothing to draft with
    return validate(manifest, Options(**values))


def validate(manifest: Manifest, o: Options) -> Options:
    """Type and range checks; returns the options with numbers normalised."""
    if o.policy not in POLICIES:
        raise OptionError(f"option policy: unknown policy {o.policy!r} (expected one of {', '.join(POLICIES)})")
    if manifest.draft is None and o.policy not in HEADLESS:
        raise OptionError(f"option policy: {o.policy!r} drafts with an EAGLE-3 head, and engine {manifest.name!r} "
                          f"({manifest.dir}) has none (target-only: draft is null in its {MANIFEST}); use policy "
                          f"{' or '.join(HEADLESS)}, or export the model with --draft")
    if o.backend not in BACKENDS:
        raise OptionError(f"option backend: unknown backend {o.backend!r} (expected one of {', '.join(BACKENDS)})")
    if o.thread_mode not in THREAD_MODES:
        raise OptionError(f"option thread_mode: unknown mode {o.thread_mode!r} "
                          f"(expected one of {', '.join(THREAD_MODES)})")
    ints = {k: _number(k, getattr(o, k), int) for k in
            (*KNOB_INTS, "max_new_tokens", "top_k", "threads")}
    floats = {k: _number(k, getattr(o, k), float) for k in
              (*KNOB_FLOATS, "temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
               "presence_penalty")}
    seed = None if o.seed is None else _number("seed", o.seed, int)
    limit = manifest.limits.max_tree_tokens
    if not 1 <= ints["budget"] <= limit:
        raise OptionError(f"option budget: {ints['budget']} outside [1, limits.max_tree_tokens={limit}] "
                          f"of {manifest.dir}/manifest.json")
    if not 0.0 < floats["mu"] <= 1.0:
        raise OptionError(f"option mu: {floats['mu']} outside (0, 1]")
    if floats["temperature"] < 0.0:
        raise OptionError(f"option temperature: {floats['temperature']} < 0 (0 means greedy)")
    if not 0.0 < floats["top_p"] <= 1.0:
        raise OptionError(f"option top_p: {floats['top_p']} outside (0, 1]")
    if ints["max_new_tokens"] == UNTIL_STOP:
        # a run generates at most max_seq_len tokens (one-token prompt): the context always stops it first
        ints["max_new_tokens"] = manifest.limits.max_seq_len + 1
    elif ints["max_new_tokens"] < 1:
        raise OptionError(f"option max_new_tokens: {ints['max_new_tokens']} must be >= 1, or {UNTIL_STOP} "
                          f"(until the end of the turn or a full context)")
    if not 0.0 <= floats["min_p"] <= 1.0:
        raise OptionError(f"option min_p: {floats['min_p']} outside [0, 1] (0 = off)")
    if not floats["repetition_penalty"] > 0.0:
        raise OptionError(f"option repetition_penalty: {floats['repetition_penalty']} must be > 0 (1 = off)")
    for key in ("frequency_penalty", "presence_penalty"):
        if not -PENALTY_RANGE <= floats[key] <= PENALTY_RANGE:
            raise OptionError(f"option {key}: {floats[key]} outside [-{PENALTY_RANGE:g}, {PENALTY_RANGE:g}] (0 = off)")
    # root_k and eagle3_top_k above draft.k_max act as k_max (the draft returns k_max children)
    for key in KNOB_INTS[1:]:
        if ints[key] < 1:
            raise OptionError(f"option {key}: {ints[key]} must be >= 1")
    for key in ("top_k", "threads"):
        if ints[key] < 0:
            raise OptionError(f"option {key}: {ints[key]} must be >= 0")
    if ints["threads"] > cpu_count():
        raise OptionError(f"option threads: {ints['threads']} above this machine's {cpu_count()} CPUs "
                          f"(0 = all of them)")
    _check_footprint(manifest, o.policy, ints)
    if seed is not None and seed < 0:
        raise OptionError(f"option seed: {seed} must be >= 0")
    return dataclasses.replace(o, **ints, **floats, seed=seed)


def _check_footprint(m: Manifest, policy: str, ints: Mapping[str, int]) -> None:
    """The options of the policy in effect must fit the engine: its verify and draft calls and the
    draft's scratch rows are bounded by the limits (budget is checked for every policy)."""
    problem = policy_spec(policy).fits(ints, m.limits)
    if problem is not None:
        raise OptionError(f"{problem} of {m.dir / MANIFEST}")
