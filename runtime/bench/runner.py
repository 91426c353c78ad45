"""One benchmark run: every prompt through every configuration, interleaved prompt-major, after a
warm-up, so slow drift of the machine (thermal, other load) hits every policy alike.

The runner drives anything Generator-like (`encode`, `generate`, `close`): the real
`talon_rt.runtime.api.Generator` or a test double. Timing is the wall clock around `generate`, prefill
included, the same measure the peers get.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from talon_rt.runtime.bench.datasets import Prompt
from talon_rt.talon.policies import CHAIN_DEPTH, MU, NAMES, policy_spec

POLICY_ORDER = NAMES


@dataclass(frozen=True)
class BenchConfig:
    """One column of the comparison. budget is the tree size incl. the root (ar: 1, chain: depth+1)."""

    policy: str
    budget: int
    temperature: float = 0.0
    mu: float | None = None  # talon, talon-cost and talon-lookup only
    root_k: int | None = None  # talon, talon-cost and talon-lookup only; None = the engine's default
    engine: str = ""  # "" = the bench's --engine; else a --compare-engine directory

    @property
    def label(self) -> str:
        mu = f" mu={self.mu:g}" if self.mu is not None else ""
        k = f" K={self.root_k}" if self.root_k is not None else ""
        where = f" [{Path(self.engine).name}]" if self.engine else ""
        return f"{self.policy} N={self.budget}{mu}{k} T={self.temperature:g}{where}"


def make_configs(policies: Sequence[str], budgets: Sequence[int], temperatures: Sequence[float],
                 mus: Sequence[float], chain_depth: int,
                 root_ks: Sequence[int | None] = (None,)) -> list[BenchConfig]:
    """A policy without knobs (ar) or with a chain's depth once per temperature (its tree does not
    depend on the budget; a chain's budget is its depth + 1); the others once per budget, and those
    that read mu (the talon ones) once per mu and root_k too."""
    configs = []
    for t in temperatures:
        for p in sorted(set(policies), key=POLICY_ORDER.index):
            knobs = policy_spec(p).knobs
            if not knobs:
                configs.append(BenchConfig(p, 1, t))
            elif CHAIN_DEPTH in knobs:
                configs.append(BenchConfig(p, chain_depth + 1, t))
            elif MU not in knobs:
                configs.extend(BenchConfig(p, n, t) for n in budgets)
            else:
                configs.extend(BenchConfig(p, n, t, mu, k) for n in budgets for mu in mus for k in root_ks)
    return configs


@dataclass(frozen=True)
class RoundShape:
    """The tree a round verified: depth = drafted layers, width = the widest layer."""

    depth: int
    width: int
    size: int  # nodes incl. the root


@dataclass(frozen=True)
class PromptRun:
    """One prompt through one configuration."""

    dataset: str
    prompt_id: str
    config: BenchConfig
    prompt_tokens: int
    new_tokens: int
    wall_s: float
    stop_reason: str
    rounds: int              # verify calls (prefill excluded)
    tau: float               # tokens emitted per verify call (the runtime's MAT)
    delta: float             # draft calls per verify call
    target_calls: int        # rounds + prefill chunks
    draft_calls: int         # prefill feed included
    engine_s: float
    host_s: float
    runtime_tokens_per_s: float
    ttft_s: float = 0.0      # time to first token: the prompt's prefill up to the first generated token
    shapes: tuple[RoundShape, ...] = ()
    pool_truncated: int = 0
    lookup_proposed: int = 0  # tree nodes the context lookup proposed (lookup, talon-lookup)
    lookup_accepted: int = 0  # accepted tokens among them
    tokens: tuple[int, ...] = field(default=(), repr=False)  # the output, to compare across policies/peers

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0


class GeneratorLike(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def render_chat(self, messages: list[dict[str, str]]) -> str: ...
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Any: ...
    def close(self) -> None: ...


OpenGenerator = Callable[[BenchConfig], GeneratorLike]


def record_run(prompt: Prompt, config: BenchConfig, prompt_ids: Sequence[int], result: Any,
               wall_s: float) -> PromptRun:
    """Summarise one `generate` result (GenerationResult with talon_rt.runtime.stats.RunStats)."""
    stats = result.stats
    shapes = tuple(RoundShape(depth=len(r.nodes_per_layer), width=max(r.nodes_per_layer, default=0),
                              size=int(r.tree_size)) for r in stats.per_round)
    return PromptRun(
        dataset=prompt.dataset, prompt_id=prompt.id, config=config, prompt_tokens=len(prompt_ids),
        new_tokens=len(result.tokens), wall_s=wall_s, stop_reason=str(result.stop_reason),
        rounds=int(stats.rounds), tau=float(stats.tau), delta=float(stats.delta),
        target_calls=int(stats.target_calls), draft_calls=int(stats.draft_calls),
        engine_s=float(stats.engine_s), host_s=float(stats.host_s),
        runtime_tokens_per_s=float(stats.tokens_per_s), ttft_s=float(stats.prefill_s), shapes=shapes,
        pool_truncated=sum(int(r.pool_truncated) for r in stats.per_round),
        lookup_proposed=sum(int(r.lookup_proposed) for r in stats.per_round),
        lookup_accepted=sum(int(r.lookup_accepted) for r in stats.per_round), tokens=tuple(result.tokens),
    )


@dataclass
class RunPlan:
    prompts: list[Prompt]
    configs: list[BenchConfig]
    max_new_tokens: int
    max_prompt_tokens: int           # longer prompts keep their last tokens
    warmup: int = 1                  # prompts run through every configuration first, not recorded
    chat: bool = False               # each prompt is a user message in the engine's chat template
    truncated_prompts: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)  # filled by run_plan: what every policy got


def _encode_all(plan: RunPlan, gen: GeneratorLike) -> list[list[int]]:
    out = []
    for p in plan.prompts:
        text = gen.render_chat([{"role": "user", "content": p.text}]) if plan.chat else p.text
        ids = list(gen.encode(text))
        if len(ids) > plan.max_prompt_tokens:
            plan.truncated_prompts.append(f"{p.dataset}/{p.id}")
            ids = ids[-plan.max_prompt_tokens:]
        out.append(ids)
    return out


def run_plan(plan: RunPlan, open_generator: OpenGenerator, progress: bool = True) -> list[PromptRun]:
    """Open one generator per configuration, warm each up, then run prompt-major: each prompt
    through every configuration before the next prompt."""
    gens: dict[BenchConfig, GeneratorLike] = {}
    try:
        for c in plan.configs:
            gens[c] = open_generator(c)
        ids = plan.prompt_ids = _encode_all(plan, gens[plan.configs[0]])
        warm = ids[:plan.warmup]
        total = (len(warm) + len(ids)) * len(plan.configs)
        runs: list[PromptRun] = []
        with _progress(progress, total) as advance:
            for pid in warm:
                for c in plan.configs:
                    gens[c].generate(pid, plan.max_new_tokens)
                    advance(f"warm-up {c.label}")
            n = len(plan.configs)
            for i, (prompt, pid) in enumerate(zip(plan.prompts, ids)):
                # prompt-major; the starting configuration rotates so none always runs first
                for c in plan.configs[i % n:] + plan.configs[:i % n]:
                    t0 = time.perf_counter()
                    res = gens[c].generate(pid, plan.max_new_tokens)
                    wall = time.perf_counter() - t0
                    runs.append(record_run(prompt, c, pid, res, wall))
                    advance(f"{prompt.dataset}/{prompt.id} {c.label}")
        return runs
    finally:
        for g in gens.values():
            g.close()


class _progress:
    """A rich progress bar when enabled, else a no-op; yields advance(description)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda _desc: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), transient=False)
        self.bar.start()
        task = self.bar.add_task("bench", total=self.total)
        return lambda desc: self.bar.update(task, advance=1, description=desc[:40])

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
