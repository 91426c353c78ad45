"""`talon-rt bench`: the comparison table, the budget sweep, the peers and the synthetic microbench.

Registered by runtime/cli.py through `add_parser(subparsers)`; `python -m talon_rt.runtime.bench ...` is the
same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from talon_rt.runtime.errors import OptionError
from talon_rt.talon.policies import BASELINE, CHAIN_DEPTH, DEFAULT, MU, NAMES, ROOT_K, SPECS, policy_spec

DEFAULT_BUDGETS = (8, 16, 32, 60)
SWEEP_BUDGETS = (4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 60)
# --out left out: a new folder per run under runs/ (git-ignored); the committed tables are written
# only when asked for by name (`make bench` passes --out bench/results)
RUNS_DIR = "runs"
# fewer prompts per dataset than this: the medians and spreads rest on too few samples to compare
MIN_PROMPTS = 5
POLICIES = NAMES
# the policies talon_rt.talon.microbench times: the head's tree shapes alone (no cost model, no lookup index)
SYNTHETIC = tuple(s.name for s in SPECS.values() if s.needs_head and not s.needs_cost and not s.reads_text)


def _csv(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="benchmark ar/chain/eagle3/talon/lookup (and peers) on evaluation prompts",
        description="Run every prompt through every policy and budget (interleaved, after a warm-up) and "
                    "write results.json, results.md and PNG plots into --out.")
    p.add_argument("-e", "--engine", help="engine directory (manifest.json, graphs, tokenizer)")
    p.add_argument("--compare-engine", action="append", default=[], metavar="DIR",
                   help="another engine of the same model and tokenizer (e.g. the float build of an int4 "
                        "one) run through the same configurations, interleaved with --engine's; its rows "
                        "are tabled apart, its speed-ups are over its own ar (repeatable)")
    p.add_argument("--dataset", type=_csv(str), default=["humaneval"],
                   help="humaneval, mtbench, gsm8k or PATH.jsonl; comma-separated for several (default humaneval)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts of each dataset")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the first N prompts of each dataset (a tuning set disjoint from a benchmark's)")
    p.add_argument("--policies", type=_csv(str), default=list(POLICIES), help=f"default {','.join(POLICIES)}")
    p.add_argument("--budgets", type=_csv(int), default=None,
                   help=f"tree budgets N incl. the root for eagle3/talon (default {','.join(map(str, DEFAULT_BUDGETS))}, "
                        "capped at the engine's limits.max_tree_tokens)")
    p.add_argument("--mu", type=_csv(float), default=None, help="talon's mu, comma-separated (default: the engine's)")
    p.add_argument("--root-k", type=_csv(int), default=None,
                   help="talon's root fan-out K, comma-separated (default: the engine's)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=128, metavar="N",
                   help="generated tokens per prompt (default %(default)s)")
    p.add_argument("--temperature", type=_csv(float), default=[0.0], help="comma-separated; 0 = greedy (default 0)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling for the T > 0 configurations (default: the engine's, 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (T > 0)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads per session, ours and the peers' (default 2)")
    p.add_argument("-o", "--out", default=None,
                   help=f"output directory (default: a new {RUNS_DIR}/bench-<UTC time>/, git-ignored)")
    p.add_argument("--raw", action="store_true",
                   help="feed prompts as raw text even when the engine has a chat template (default: each "
                        "prompt is a user message in the template)")
    p.add_argument("--warmup", type=int, default=1, help="prompts run through every configuration before measuring")
    p.add_argument("--sweep", action="store_true",
                   help="find the best talon budget for this engine on this machine (budgets default to a sweep grid)")
    p.add_argument("--write-defaults", action="store_true",
                   help="with --sweep: write the best budget (and mu / root K when several were given) "
                        "into the engine's manifest defaults")
    p.add_argument("--peers", action="store_true",
                   help="also run llama.cpp, onnxruntime-genai and transformers on the same model and prompts")
    p.add_argument("--gguf", help="the GGUF the engine was exported from (for --peers: llama.cpp)")
    p.add_argument("--hf-model", help="the target in Hugging Face format (for --peers: onnxruntime-genai, "
                                      "transformers; `python -m talon_rt.export.hf_folder` makes one from a GGUF)")
    p.add_argument("--draft-lm", help="a standalone draft LM in Hugging Face format (for the peers' draft modes)")
    p.add_argument("--peers-cache", default=None,
                   help="where the peers' virtualenvs, builds and exported models are cached "
                        "(default ~/.cache/talon-rt/peers)")
    p.add_argument("--peers-here", action="store_true",
                   help="run the peers with this Python (which then needs their libraries) instead of each "
                        "family's own virtualenv")
    p.add_argument("--synthetic", action="store_true",
                   help="run the algorithm-only host-time microbench (talon_rt.talon.microbench) instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _synthetic(args: argparse.Namespace) -> int:
    from talon_rt.talon import microbench
    argv = ["--budgets", *map(str, args.budgets or DEFAULT_BUDGETS),
            "--policies", *[p for p in args.policies if p in SYNTHETIC]]
    microbench.main(argv)
    return 0


def _engine_info(manifest: Any) -> dict[str, Any]:
    return {"dir": str(manifest.dir), "name": manifest.name, "created_by": manifest.created_by,
            "model": dataclasses.asdict(manifest.model), "draft": dataclasses.asdict(manifest.draft) if manifest.draft else None,
            "limits": dataclasses.asdict(manifest.limits), "defaults": dict(manifest.defaults),
            "graphs": {k: dataclasses.asdict(v) for k, v in manifest.graphs.items()}}


def _budgets(args: argparse.Namespace, limit: int) -> tuple[list[int], list[int]]:
    """(budgets to run, grid budgets dropped for exceeding the engine's limit); an explicit budget
    above the limit is an error."""
    if args.budgets:
        over = [b for b in args.budgets if not 1 <= b <= limit]
        if over:
            raise OptionError(f"--budgets: {over} outside [1, limits.max_tree_tokens={limit}] of the engine's "
                              f"manifest.json")
        return sorted(set(args.budgets)), []
    grid = SWEEP_BUDGETS if args.sweep else DEFAULT_BUDGETS
    return [b for b in grid if b <= limit], [b for b in grid if b > limit]


def default_out(now: Any = None) -> Path:
    """A folder no earlier run wrote: runs/bench-YYYYmmdd-HHMMSS[-n]."""
    import datetime as dt
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    out, n = Path(RUNS_DIR) / f"bench-{stamp}", 1
    while out.exists():
        n += 1
        out = Path(RUNS_DIR) / f"bench-{stamp}-{n}"
    return out


def few_prompts_warnings(prompts: Sequence[Any], datasets: Sequence[str]) -> list[str]:
    """One warning per dataset with fewer than MIN_PROMPTS prompts."""
    from collections import Counter
    counts = Counter(p.dataset for p in prompts)
    names = list(dict.fromkeys(p.dataset for p in prompts)) or list(datasets)
    return [f"{name}: {counts[name]} prompt(s), fewer than {MIN_PROMPTS}: medians and p10–p90 spreads of so few "
            f"runs are noise-prone, compare them with care" for name in names if counts[name] < MIN_PROMPTS]


def _check_args(args: argparse.Namespace) -> None:
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        raise OptionError(f"--policies: unknown {unknown} (expected some of {', '.join(POLICIES)})")
    if args.write_defaults and not args.sweep:
        raise OptionError("--write-defaults needs --sweep")
    if args.limit is not None and args.limit < 1:
        raise OptionError(f"--limit must be >= 1, got {args.limit}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise OptionError(f"--top-p {args.top_p}: outside (0, 1]")
    if args.max_new_tokens < 1 or args.warmup < 0 or args.threads < 0:
        raise OptionError("--max-new-tokens must be >= 1, --warmup and --threads >= 0")
    if not args.engine:
        raise OptionError("--engine is required (except with --synthetic)")


def check_gguf(gguf: str | None, manifest: Any) -> None:
    """--gguf must be a file, and the engine's own source when its manifest names one: the peers
    and talon-rt run the same model."""
    if not gguf:
        return
    if not Path(gguf).is_file():
        raise OptionError(f"--gguf {gguf}: no such file")
    src = manifest.source
    if src and (src.get("format"), src.get("name")) != ("gguf", Path(gguf).name):
        raise OptionError(f"--gguf {gguf}: not the engine's source (source = {src.get('format')} "
                          f"{src.get('name')!r} in {manifest.dir}/manifest.json)")


def compare_manifests(dirs: Sequence[str], manifest: Any) -> list[Any]:
    """The --compare-engine manifests: each must tokenize as --engine does (the prompt ids are
    encoded once) and be a different directory."""
    from talon_rt.runtime.manifest import open_manifest
    out = []
    for d in dirs:
        m = open_manifest(d, verify_checksums=False)
        if Path(m.dir).resolve() in {Path(x.dir).resolve() for x in [manifest, *out]}:
            raise OptionError(f"--compare-engine {d}: already in the run")
        mine, theirs = (x.files.get(x.tokenizer.file) for x in (manifest, m))
        if mine is None or theirs is None or mine.sha256 != theirs.sha256 \
                or m.tokenizer.chat_template != manifest.tokenizer.chat_template:
            raise OptionError(f"--compare-engine {d}: its tokenizer or chat template differs from --engine "
                              f"{manifest.dir}'s (the same prompt ids go to both)")
        out.append(m)
    return out


def run(args: argparse.Namespace) -> int:
    """The subcommand; a TalonError propagates to talon_rt.runtime.cli, which prints it in one line."""
    if args.synthetic:
        return _synthetic(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from talon_rt.runtime.bench import metrics, plots, report, sweep
    from talon_rt.runtime.bench.datasets import load_prompts
    from talon_rt.runtime.bench.runner import RunPlan, make_configs, run_plan
    from talon_rt.runtime.manifest import open_manifest

    _check_args(args)
    manifest = open_manifest(args.engine, verify_checksums=False)  # Generator.open verifies them
    check_gguf(args.gguf, manifest)
    others = compare_manifests(args.compare_engine, manifest)
    every = [manifest, *others]
    policies = [BASELINE, DEFAULT] if args.sweep and args.policies == list(POLICIES) else args.policies
    budgets, dropped = _budgets(args, min(m.limits.max_tree_tokens for m in every))
    mus = args.mu or [float(manifest.defaults.get(MU.option, MU.default))]
    chain_depth = int(manifest.defaults.get(CHAIN_DEPTH.option, CHAIN_DEPTH.default))
    root_ks = args.root_k or [int(manifest.defaults.get(ROOT_K.option, ROOT_K.default))]
    configs = make_configs(policies, budgets, args.temperature, mus, chain_depth, root_ks)
    if not configs:
        raise OptionError("nothing to run: no policy/budget left (check --policies and --budgets)")
    configs += [dataclasses.replace(c, engine=str(m.dir)) for m in others for c in configs]
    prompts = [p for name in args.dataset for p in load_prompts(name, args.limit, args.offset)]
    largest_tree = max(c.budget for c in configs)
    shortest = min(every, key=lambda m: m.limits.max_seq_len)
    max_prompt = shortest.limits.max_seq_len - args.max_new_tokens - largest_tree - 1
    if max_prompt < 1:
        raise OptionError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in "
                          f"limits.max_seq_len={shortest.limits.max_seq_len} of {shortest.dir}/manifest.json")
    plan = RunPlan(prompts, configs, args.max_new_tokens, max_prompt, warmup=min(args.warmup, len(prompts)),
                   chat=manifest.tokenizer.chat_template is not None and not args.raw)

    warnings = few_prompts_warnings(prompts, args.dataset)
    for w in warnings:   # before the run: the user may rather stop it
        print(f"talon-rt bench: warning: {w}", file=sys.stderr)
    runs = run_plan(plan, _generator_opener(args), progress=not args.no_progress)
    rows = metrics.build_rows(runs)
    best = metrics.best_budget(rows) if DEFAULT in policies else None
    extra: dict[str, Any] = {"truncated_prompts": plan.truncated_prompts, "budgets_dropped": dropped,
                             "warnings": warnings}
    if args.sweep and args.write_defaults and best is not None:
        extra["defaults_written"] = str(sweep.write_defaults(args.engine, best))
    peers_rows: list[dict] = []
    if args.peers:
        peers_rows = _run_peers(args, plan, rows, runs, manifest, others)
    settings = _settings(args, plan, manifest, policies=policies, budgets=budgets, mus=mus,
                         chain_depth=chain_depth, max_prompt=max_prompt)
    if others:
        extra["compare_engines"] = [_engine_info(m) for m in others]
    results = report.build_results(rows=rows, runs=runs, settings=settings, engine=_engine_info(manifest),
                                   peers=peers_rows, best=best, extra=extra, command=sys.argv)
    out = Path(args.out) if args.out is not None else default_out()
    out.mkdir(parents=True, exist_ok=True)
    written = plots.write_plots(metrics.engine_rows(rows), out, peers_rows)
    js, md = report.write_results(out, results, written)
    _print_tables(rows, others, peers_rows, best, extra)
    print(f"wrote {js}, {md}" + "".join(f", {p}" for p in written))
    return 0


def _generator_opener(args: argparse.Namespace) -> Callable[[Any], Any]:
    """open_generator(config): a Generator on the config's engine with its policy settings."""
    from talon_rt.runtime.api import Generator

    def open_generator(c):
        opts: dict[str, Any] = {"policy": c.policy, "budget": c.budget, "temperature": c.temperature,
                                "seed": args.seed, "threads": args.threads, "max_new_tokens": args.max_new_tokens}
        if CHAIN_DEPTH in policy_spec(c.policy).knobs:   # a chain's budget is its depth + 1
            opts[CHAIN_DEPTH.option] = c.budget - 1
        if c.mu is not None:
            opts["mu"] = c.mu
        if c.root_k is not None:
            opts["root_k"] = c.root_k
        if args.top_p is not None and c.temperature > 0:
            opts["top_p"] = args.top_p
        return Generator.open(c.engine or args.engine, **opts)
    return open_generator


def _settings(args: argparse.Namespace, plan: Any, manifest: Any, *, policies: list[str], budgets: list[int],
              mus: list[float], chain_depth: int, max_prompt: int) -> dict[str, Any]:
    """The run's settings as results.json records them."""
    return {"datasets": args.dataset, "prompts_per_dataset": args.limit or "all", "offset": args.offset,
            "warmup": plan.warmup,
            "max_new_tokens": args.max_new_tokens, "threads": args.threads, "policies": policies,
            "budgets": budgets, "mus": mus, "temperatures": args.temperature, "seed": args.seed,
            "top_p": args.top_p if args.top_p is not None else float(manifest.defaults.get("top_p", 1.0)),
            "chain_depth": chain_depth, "max_prompt_tokens": max_prompt, "sweep": args.sweep,
            "chat_template": plan.chat}


def _print_tables(rows: list[dict], others: Sequence[Any], peers_rows: list[dict], best: dict | None,
                  extra: dict[str, Any]) -> None:
    """Table 1 of each engine, the peers' table and the best talon budget, on stdout."""
    from talon_rt.runtime.bench import metrics, report

    print("\n".join(report.table1(metrics.engine_rows(rows))))
    for m in others:
        print(f"## {m.name} ({m.dir})\n" + "\n".join(report.table1(metrics.engine_rows(rows, str(m.dir)))))
    if peers_rows:
        print("\n".join(report.peers_table(peers_rows, rows)))
    if best is not None:
        extra_k = "".join(f", {n}={best[k]:g}" for k, n in (("mu", "mu"), ("root_k", "K")) if best.get(k) is not None)
        print(f"best talon budget here: N={best['budget']}{extra_k} ({best['tokens_per_s_geomean']:.1f} tok/s)"
              + (f"; written into {extra['defaults_written']}" if "defaults_written" in extra else ""))


def _run_peers(args: argparse.Namespace, plan: Any, rows: list[dict], runs: list[Any], manifest: Any,
               others: Sequence[Any] = ()) -> list[dict]:
    from talon_rt.runtime.bench.peers import PeerPrompt, default_cache_dir, run_peers
    from talon_rt.runtime.bench.peers.agreement import agreement, label
    from talon_rt.runtime.bench.report import output_digest
    prompts = [PeerPrompt(p.dataset, p.id, ids) for p, ids in zip(plan.prompts, plan.prompt_ids)]
    cache = Path(args.peers_cache) if args.peers_cache else default_cache_dir()
    say = None if args.no_progress else (lambda name: print(f"peer: {name}", file=sys.stderr, flush=True))
    peers = run_peers(prompts, hf_model=args.hf_model, draft_lm=args.draft_lm, gguf=args.gguf,
                      stop_ids=manifest.tokenizer.stop_ids, max_new_tokens=args.max_new_tokens,
                      threads=args.threads, warmup=plan.warmup, cache_dir=cache, own_envs=not args.peers_here,
                      progress=say)
    ar = {r["dataset"]: r["tokens_per_s"] for r in rows
          if r["policy"] == BASELINE and r["temperature"] == 0 and not r.get("engine")}
    # same-weights peers must emit a float engine's ar tokens: --engine's, else a float --compare-engine's
    floats = [str(m.dir) if i else "" for i, m in enumerate([manifest, *others]) if m.model.weights == "float"]
    ref = floats[0] if floats else ""
    ar_out = {(r.dataset, r.prompt_id): r.tokens for r in runs
              if r.config.policy == BASELINE and r.config.temperature == 0 and r.config.engine == ref}
    fp32_engine = bool(floats)
    for p in peers:
        base = ar.get(p["dataset"])
        p["talon_rt_ar_over_peer"] = base / p["tokens_per_s"] if base and p["tokens_per_s"] else None
        p["agreement"] = agreement(p.get("runs", ()), ar_out, expected=p["same_weights"] and fp32_engine,
                                   stop_ids=manifest.tokenizer.stop_ids)
        p["same_output_as_ar"] = label(p["agreement"])
        for r in p.get("runs", ()):
            r["output_digest"] = output_digest(r.pop("tokens"))
    return peers


if __name__ == "__main__":
    sys.exit(main())
