"""results.json (every number, the machine, versions, commit) and results.md (Table-1-like)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from talon_rt.runtime.bench.metrics import engine_rows
from talon_rt.runtime.bench.runner import PromptRun
from talon_rt.talon.policies import BASELINE, BUDGET, CHAIN_DEPTH, SPECS, policy_spec

SCHEMA = 1
VERSIONED = ("talon-rt", "numpy", "onnxruntime", "onnxruntime-genai", "tokenizers", "torch",
             "transformers", "matplotlib")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {"host": platform.node(), "os": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "usable_cores": len(affinity) if affinity is not None else os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(cwd: Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parents[2]
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def output_digest(tokens: Sequence[int]) -> str:
    """A short fingerprint of an output (token ids), for comparing outputs in results.json."""
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:16]


def prompt_run_json(r: PromptRun) -> dict[str, Any]:
    d = _jsonable(r)
    d.pop("tokens")
    d["output_digest"] = output_digest(r.tokens)
    d["tokens_per_s"] = r.tokens_per_s
    d["shapes"] = [[s.depth, s.width, s.size] for s in r.shapes]  # compact: [depth, width, size]
    return d


def build_results(*, rows: Sequence[dict], runs: Sequence[PromptRun], settings: dict, engine: dict,
                  peers: Sequence[dict] = (), best: dict | None = None, extra: dict | None = None,
                  command: Sequence[str] = ()) -> dict[str, Any]:
    return _jsonable({
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_info(),
        "engine": engine,
        "settings": settings,
        "rows": list(rows),
        "peers": list(peers),
        "best_budget": best,
        **(extra or {}),
        "prompt_runs": [prompt_run_json(r) for r in runs],
    })


# our policies (not a published baseline) the peers table sets beside each peer
PEER_COLUMNS = tuple(s.name for s in SPECS.values() if not s.baseline)

def _f(x: Any, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if x is None else fmt.format(x)


def _policy_label(row: dict) -> str:
    knobs = policy_spec(row["policy"]).knobs
    if BUDGET not in knobs:
        return f"{row['policy']} (depth {row['budget'] - 1})" if CHAIN_DEPTH in knobs else row["policy"]
    mu = f", mu={row['mu']:g}" if row.get("mu") is not None else ""
    k = f", K={row['root_k']}" if row.get("root_k") is not None else ""
    return f"{row['policy']} (N={row['budget']}{mu}{k})"


def table1(rows: Sequence[dict]) -> list[str]:
    """Paper-style Table 1: one line per policy/budget, MAT (tau) and speed-up per dataset."""
    out = []
    for temp in sorted({r["temperature"] for r in rows}):
        sub = [r for r in rows if r["temperature"] == temp]
        datasets = list(dict.fromkeys(r["dataset"] for r in sub))
        out += [f"### T = {temp:g}", ""]
        head = "| policy | " + " | ".join(f"{d} τ | {d} ×ar" for d in datasets) + " | mean ×ar |"
        out += [head, "|" + "---|" * (1 + 2 * len(datasets) + 1)]
        keys = list(dict.fromkeys((r["policy"], r["budget"], r["mu"], r.get("root_k")) for r in sub))
        for key in keys:
            cells, speedups, label = [], [], None
            for d in datasets:
                row = next((r for r in sub if r["dataset"] == d
                            and (r["policy"], r["budget"], r["mu"], r.get("root_k")) == key), None)
                if row is None:
                    cells += ["–", "–"]
                    continue
                label = _policy_label(row)
                cells += [_f(row["tau"]), _f(row["speedup_vs_ar"], "{:.2f}x")]
                if row["speedup_vs_ar"] is not None:
                    speedups.append(row["speedup_vs_ar"])
            mean = sum(speedups) / len(speedups) if speedups else None
            out.append(f"| {label} | " + " | ".join(cells) + f" | {_f(mean, '{:.2f}x')} |")
        out.append("")
    return out


def _spread(row: dict, key: str, fmt: str) -> str:
    """`row[key]`'s p10–p90 (10th to 90th percentile over prompts)."""
    lo, hi = row.get(f"{key}_p10"), row.get(f"{key}_p90")
    return "–" if lo is None or hi is None else f"{fmt.format(lo)}–{fmt.format(hi)}"


def detail_table(rows: Sequence[dict]) -> list[str]:
    out = ["| dataset | T | policy | tok/s (median) | tok/s p10–p90 | TTFT ms (median) | TTFT p10–p90 | ×ar | "
           "τ | δ | host share | depth | width | tree size | pool cut | prompts |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = f" [{Path(r['engine']).name}]" if r.get("engine") else ""
        ms = {k: (None if r.get(k) is None else 1e3 * r[k]) for k in ("ttft_s", "ttft_s_p10", "ttft_s_p90")}
        out.append(f"| {r['dataset']} | {r['temperature']:g} | {_policy_label(r)}{where} | {_f(r['tokens_per_s'], '{:.1f}')} | "
                   f"{_spread(r, 'tokens_per_s', '{:.1f}')} | {_f(ms['ttft_s'], '{:.1f}')} | "
                   f"{_spread(ms, 'ttft_s', '{:.1f}')} | {_f(r['speedup_vs_ar'], '{:.2f}x')} | {_f(r['tau'])} | {_f(r['delta'])} | "
                   f"{_f(r['host_share'], '{:.1%}')} | {_f(r['depth_mean'], '{:.1f}')} | "
                   f"{_f(r['width_mean'], '{:.1f}')} | {_f(r['tree_size_mean'], '{:.1f}')} | "
                   f"{r['pool_truncations']} | {r['prompts']} |")
    return out


def peers_table(peers: Sequence[dict], rows: Sequence[dict]) -> list[str]:
    """Each peer configuration beside talon-rt's `ar`, and `talon`, `talon-cost`, `lookup` and
    `talon-lookup` at their best budgets (T=0)."""
    ar: dict[str, dict] = {}
    best: dict[str, dict[str, dict]] = {p: {} for p in PEER_COLUMNS}
    for r in engine_rows(rows):
        if r["temperature"] != 0:
            continue
        if r["policy"] == BASELINE:
            ar[r["dataset"]] = r
        elif r["policy"] in best and r["tokens_per_s"] > best[r["policy"]].get(r["dataset"], {}).get("tokens_per_s", 0):
            best[r["policy"]][r["dataset"]] = r
    out = ["| dataset | peer configuration | tok/s (median) | tok/s p10–p90 | τ | "
           + "".join(f"{p} best / peer | " for p in PEER_COLUMNS) + "ar / peer | same output as ar | status |",
           "|---|---|---|---|---|" + "---|" * len(PEER_COLUMNS) + "---|---|---|"]

    def ratio(r: dict | None, tps: float | None, tag: bool) -> str:
        if not r or not tps:
            return "–"
        return f"{r['tokens_per_s'] / tps:.2f}x" + (f" (N={r['budget']})" if tag else "")

    for p in peers:
        ds, tps = p["dataset"], p.get("tokens_per_s")
        out.append(f"| {ds} | {p['peer']} | {_f(tps, '{:.1f}')} | {_spread(p, 'tokens_per_s', '{:.1f}')} | "
                   f"{_f(p.get('tau'))} | "
                   + "".join(f"{ratio(best[c].get(ds), tps, True)} | " for c in PEER_COLUMNS)
                   + f"{ratio(ar.get(ds), tps, False)} | {p.get('same_output_as_ar') or '–'} | {p['status']} |")
    return out


def peer_settings(peers: Sequence[dict]) -> list[str]:
    """One line per peer configuration that ran: its recorded detail (versions, build, threads)."""
    seen: dict[str, dict] = {}
    for p in peers:
        if p.get("detail") and p["peer"] not in seen:
            seen[p["peer"]] = p["detail"]
    return [f"- {peer}: " + "; ".join(f"{k} {json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                      for k, v in detail.items()) for peer, detail in seen.items()]


def render_markdown(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    m, s, e, g = results["machine"], results["settings"], results["engine"], results["git"]
    v = results["versions"]
    lines = [f"# talon-rt bench: {e.get('name', '?')}", "",
             f"- machine: {m['cpu']} ({m['usable_cores']} usable cores), {m['os']}, Python {m['python']}"
             + (f"; load average {m['load_avg_1_5_15'][0]:.1f} when written" if m.get("load_avg_1_5_15") else ""),
             f"- versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x),
             f"- commit: {g.get('commit') or 'unknown'}{' (dirty)' if g.get('dirty') else ''}; created {results['created']}",
             f"- settings: datasets {', '.join(s['datasets'])}; {s['prompts_per_dataset']} prompt(s) each "
             + (f"(skipping the first {s['offset']}) " if s.get("offset") else "")
             + f"after {s['warmup']} warm-up; max_new_tokens {s['max_new_tokens']}; threads {s['threads']}"
             + (f"; sampling (T > 0) with top-p {s['top_p']:g}, seed {s['seed']}"
                if any(t > 0 for t in s.get("temperatures", ())) and s.get("top_p") is not None else ""),
             "- tokens/s: median over prompts of new tokens / wall time of one generate call (prefill "
             "included), with its spread (10th–90th percentile over prompts); TTFT: time to first token "
             "(the prompt's prefill up to the first generated token); ×ar: ratio of medians against `ar` of "
             "the same engine in the same run; τ (MAT): tokens per verify call; δ: draft calls per verify "
             "call.", ""]
    lines += [f"**Warning:** {w}" for w in results.get("warnings", ())] + ([""] if results.get("warnings") else [])
    if results["rows"]:
        lines += ["## MAT (τ) and speed-up over ar, per dataset", ""] + table1(engine_rows(results["rows"]))
        for c in results.get("compare_engines", ()):
            lines += [f"## The same prompts through {c['name']} ({c['dir']}: target weights "
                      f"{c['model']['weights']}, {c['model']['compute']} compute), interleaved", ""]
            lines += table1(engine_rows(results["rows"], c["dir"]))
        lines += ["## All numbers", ""] + detail_table(results["rows"]) + [""]
    if results.get("best_budget"):
        b = results["best_budget"]
        lines += ["## Best budget on this machine", "",
                  f"{b['policy']} N={b['budget']}"
                  + "".join(f", {n}={b[k]:g}" for k, n in (("mu", "mu"), ("root_k", "K")) if b.get(k) is not None)
                  + f": {b['tokens_per_s_geomean']:.1f} tok/s (geometric mean over the "
                  f"datasets run); candidates: " + ", ".join(f"N={k}: {x:.1f}" for k, x in b["candidates"].items()),
                  ""]
        if results.get("defaults_written"):
            lines += [f"Written into {results['defaults_written']}.", ""]
    if results.get("peers"):
        lines += ["## Peers on the same model and prompt ids", ""] + peers_table(results["peers"], results["rows"])
        lines += ["", "Peer settings (versions, build flags, threads):", ""] + peer_settings(results["peers"]) + [""]
    for p in plots:
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    return "\n".join(lines)


def write_results(out_dir: Path, results: dict[str, Any], plots: Sequence[str] = ()) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    md.write_text(render_markdown(results, plots), encoding="utf-8")
    return js, md
