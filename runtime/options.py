"""Generation and session options: defined once, typed, validated against the engine's limits.

Any option left out takes the manifest's `defaults`, then the fallback below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from runtime.errors import OptionError
from runtime.manifest import Manifest

# talon-cost: TALON with the cost-aware stop and size extension (talon/cost.py); budget = its cap
POLICIES = ("ar", "chain", "eagle3", "talon", "talon-cost")
BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt")
# How the target and draft sessions share the CPU (DESIGN §8: two spinning pools fight on 2 cores).
THREAD_MODES = ("runspin", "nospin", "shared", "spin")


@dataclass(frozen=True)
class Options:
    policy: str = "talon"          # the paper's policy; the manifest usually names one
    budget: int = 16               # tree nodes incl. root; N=60 is the paper's H200 value, CPUs want less
    mu: float = 0.03               # TALON's relative score threshold (paper default)
    root_k: int = 10               # TALON's robust first layer: top-K children of the root (paper K=10)
    eagle3_top_k: int = 10         # EAGLE-2/3 topK_genrate default
    eagle3_depth: int = 7          # EAGLE-3 default depth (8 draft calls incl. the root's)
    chain_depth: int = 4           # classic chain speculation depth
    max_new_tokens: int = 128
    temperature: float = 0.0       # 0 = greedy
    top_p: float = 1.0             # 1 = off
    top_k: int = 0                 # 0 = off
    seed: int | None = None        # None = nondeterministic sampling
    backend: str = "auto"          # tensorrt if plans + GPU, else ort-cuda if available, else ort-cpu
    threads: int = 0               # intra-op threads per session; 0 = ORT's choice (all cores)
    thread_mode: str = "runspin"   # measured fastest on 2 cores (see runtime/backends/ort.py)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options))
# fixed when an engine's sessions are opened; the others may change per generation (Generator.with_options)
SESSION_OPTIONS = ("backend", "threads", "thread_mode")


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise OptionError(f"option {name}: expected {'a number' if kind is float else 'an integer'}, "
                          f"got {value!r}")
    return kind(value)


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
    return validate(manifest, Options(**values))


def validate(manifest: Manifest, o: Options) -> Options:
    """Type and range checks; returns the options with numbers normalised."""
    if o.policy not in POLICIES:
        raise OptionError(f"option policy: unknown policy {o.policy!r} (expected one of {', '.join(POLICIES)})")
    if o.backend not in BACKENDS:
        raise OptionError(f"option backend: unknown backend {o.backend!r} (expected one of {', '.join(BACKENDS)})")
    if o.thread_mode not in THREAD_MODES:
        raise OptionError(f"option thread_mode: unknown mode {o.thread_mode!r} "
                          f"(expected one of {', '.join(THREAD_MODES)})")
    ints = {k: _number(k, getattr(o, k), int) for k in
            ("budget", "root_k", "eagle3_top_k", "eagle3_depth", "chain_depth", "max_new_tokens", "top_k",
             "threads")}
    floats = {k: _number(k, getattr(o, k), float) for k in ("mu", "temperature", "top_p")}
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
    # root_k and eagle3_top_k above draft.k_max act as k_max (the draft returns k_max children)
    for key in ("root_k", "eagle3_top_k", "eagle3_depth", "chain_depth", "max_new_tokens"):
        if ints[key] < 1:
            raise OptionError(f"option {key}: {ints[key]} must be >= 1")
    for key in ("top_k", "threads"):
        if ints[key] < 0:
            raise OptionError(f"option {key}: {ints[key]} must be >= 0")
    if seed is not None and seed < 0:
        raise OptionError(f"option seed: {seed} must be >= 0")
    return dataclasses.replace(o, **ints, **floats, seed=seed)
