"""Per-(dataset, policy, budget, temperature) rows from the prompt runs.

tau   = tokens emitted per verify call (MAT), over all rounds of all prompts (prefill excluded)
delta = draft calls per verify call
tokens_per_s = median over prompts of (new tokens / wall time of generate); _p10 / _p90 its spread
ttft_s = median over prompts of the time to first token (prefill up to the first token); _p10 / _p90
speedup_vs_ar = ratio of medians against `ar` of the same engine, dataset and temperature, same run
host_share = host time / (host + engine time), over all rounds
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from talon_rt.runtime.bench.runner import POLICY_ORDER, BenchConfig, PromptRun
from talon_rt.talon.policies import BASELINE, DEFAULT


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(10th, 90th) percentile, linearly interpolated; (None, None) for no values."""
    if not values:
        return None, None
    p10, p90 = np.percentile(np.asarray(values, dtype=np.float64), [10, 90])
    return float(p10), float(p90)


def _hist(values: Iterable[int]) -> dict[str, int]:
    counts = Counter(values)
    return {str(k): counts[k] for k in sorted(counts)}


def summarize(runs: Sequence[PromptRun]) -> dict[str, Any]:
    """The row of one (dataset, configuration): every aggregate the report and plots use."""
    c = runs[0].config
    rounds = sum(r.rounds for r in runs)
    shapes = [s for r in runs for s in r.shapes]
    busy = sum(r.engine_s + r.host_s for r in runs)
    tps = [r.tokens_per_s for r in runs]
    ttft = [r.ttft_s for r in runs]
    return {
        "dataset": runs[0].dataset,
        "engine": c.engine,
        "policy": c.policy,
        "budget": c.budget,
        "temperature": c.temperature,
        "mu": c.mu,
        "root_k": c.root_k,
        "prompts": len(runs),
        "tau": _ratio(sum(r.tau * r.rounds for r in runs), rounds),
        "delta": _ratio(sum(r.delta * r.rounds for r in runs), rounds),
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_p10": spread(tps)[0],
        "tokens_per_s_p90": spread(tps)[1],
        "ttft_s": statistics.median(ttft),
        "ttft_s_p10": spread(ttft)[0],
        "ttft_s_p90": spread(ttft)[1],
        "runtime_tokens_per_s": statistics.median(r.runtime_tokens_per_s for r in runs),
        "speedup_vs_ar": None,
        "host_share": _ratio(sum(r.host_s for r in runs), busy),
        "new_tokens": sum(r.new_tokens for r in runs),
        "wall_s": sum(r.wall_s for r in runs),
        "target_calls": sum(r.target_calls for r in runs),
        "draft_calls": sum(r.draft_calls for r in runs),
        "rounds": rounds,
        "depth_mean": statistics.fmean(s.depth for s in shapes) if shapes else None,
        "width_mean": statistics.fmean(s.width for s in shapes) if shapes else None,
        "tree_size_mean": statistics.fmean(s.size for s in shapes) if shapes else None,
        "depth_hist": _hist(s.depth for s in shapes),
        "width_hist": _hist(s.width for s in shapes),
        "depth_width": [[d, w, n] for (d, w), n in sorted(Counter((s.depth, s.width) for s in shapes).items())],
        "pool_truncations": sum(r.pool_truncated for r in runs),
        "lookup_proposed": sum(r.lookup_proposed for r in runs),
        "lookup_accepted": sum(r.lookup_accepted for r in runs),
        "stop_reasons": dict(Counter(r.stop_reason for r in runs)),
    }


def _order(row: dict[str, Any], datasets: Sequence[str]) -> tuple:
    return (row.get("engine", ""), datasets.index(row["dataset"]), row["temperature"], POLICY_ORDER.index(row["policy"]), row["budget"],
            row["mu"] or 0.0, row.get("root_k") or 0)


def build_rows(runs: Sequence[PromptRun]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, BenchConfig], list[PromptRun]] = defaultdict(list)
    for r in runs:
        groups[(r.dataset, r.config)].append(r)
    datasets = list(dict.fromkeys(r.dataset for r in runs))  # in the order given
    rows = sorted((summarize(g) for g in groups.values()), key=lambda row: _order(row, datasets))
    ar = {(r["engine"], r["dataset"], r["temperature"]): r["tokens_per_s"] for r in rows if r["policy"] == BASELINE}
    for r in rows:
        base = ar.get((r["engine"], r["dataset"], r["temperature"]))
        r["speedup_vs_ar"] = _ratio(r["tokens_per_s"], base) if base is not None else None
    return rows


def engine_rows(rows: Sequence[dict[str, Any]], engine: str = "") -> list[dict[str, Any]]:
    """The rows of one engine ("" = the bench's --engine; else a --compare-engine directory)."""
    return [r for r in rows if r.get("engine", "") == engine]


def best_budget(rows: Sequence[dict[str, Any]], policy: str = DEFAULT) -> dict[str, Any] | None:
    """The (budget, mu, root_k) with the highest geometric-mean tokens/s over the datasets and
    temperatures run (each dataset weighs the same) on the --engine; ties go to the smaller budget."""
    by_config: dict[tuple[int, float | None, int | None], list[float]] = defaultdict(list)
    for r in engine_rows(rows):
        if r["policy"] == policy and r["tokens_per_s"] > 0:
            by_config[(r["budget"], r["mu"], r.get("root_k"))].append(r["tokens_per_s"])
    if not by_config:
        return None
    score = {k: math.exp(statistics.fmean(math.log(v) for v in vs)) for k, vs in by_config.items()}
    (budget, mu, root_k), best = max(score.items(), key=lambda kv: (kv[1], -kv[0][0]))

    def name(b: int, m: float | None, k: int | None) -> str:
        return str(b) + (f" mu={m:g}" if m is not None and len({c[1] for c in score}) > 1 else "") + \
            (f" K={k}" if k is not None and len({c[2] for c in score}) > 1 else "")
    return {"policy": policy, "budget": budget, "mu": mu, "root_k": root_k, "tokens_per_s_geomean": best,
            "candidates": {name(*c): s for c, s in sorted(score.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0,
                                                                                     kv[0][2] or 0))}}
