"""`talon-rt bench` end to end on the tiny engine: outputs, sweep + write-defaults, errors."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import edited_engine

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "talon_rt.runtime.cli", "bench", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_writes_three_outputs(tiny_engine, tmp_path):
    out = tmp_path / "out"
    proc = _bench("--engine", tiny_engine, "--dataset", "humaneval", "--limit", 2, "--budgets", "8,16",
                  "--max-new-tokens", 12, "--out", out)
    assert "| talon (N=8, mu=0.03, K=10) |" in proc.stdout
    data = json.loads((out / "results.json").read_text())
    policies = {(r["policy"], r["budget"]) for r in data["rows"]}
    assert policies == {("ar", 1), ("chain", 5), ("eagle3", 8), ("eagle3", 16), ("talon", 8), ("talon", 16),
                        ("talon-cost", 8), ("talon-cost", 16), ("lookup", 8), ("lookup", 16),
                        ("talon-lookup", 8), ("talon-lookup", 16), ("talon-gated", 8), ("talon-gated", 16)}
    for r in data["rows"]:
        assert r["dataset"] == "humaneval" and r["temperature"] == 0 and r["prompts"] == 2
        assert r["tokens_per_s"] > 0 and r["tau"] >= 1 and r["speedup_vs_ar"] > 0
    for r in data["rows"]:
        assert 0 <= r["lookup_accepted"] <= r["lookup_proposed"]
        assert (r["lookup_proposed"] > 0) <= (r["policy"] in ("lookup", "talon-lookup", "talon-gated"))
        assert (r["draft_calls"] == 0) == (r["policy"] in ("ar", "lookup"))
    talon = next(r for r in data["rows"] if r["policy"] == "talon" and r["budget"] == 16)
    assert talon["delta"] > 0 and talon["rounds"] > 0 and talon["depth_hist"]
    assert data["engine"]["name"] == "tiny" and data["git"]["commit"]
    assert len(data["prompt_runs"]) == 2 * 14
    assert "## MAT (τ) and speed-up over ar" in (out / "results.md").read_text()
    assert (out / "speedup_vs_budget.png").stat().st_size > 0
    assert (out / "tree_depth_width.png").stat().st_size > 0
    assert (out / "tokens_per_s.png").stat().st_size > 0
    for r in data["rows"]:
        assert r["tokens_per_s_p10"] <= r["tokens_per_s"] <= r["tokens_per_s_p90"] and r["ttft_s"] > 0
    assert "warning: humaneval: 2 prompt(s), fewer than 5" in proc.stderr
    assert "**Warning:** humaneval: 2 prompt(s)" in (out / "results.md").read_text()


def test_out_defaults_to_a_new_ignored_runs_folder(tiny_engine, tmp_path):
    """Without --out nothing lands in bench/results: a new runs/bench-<time>/ per run."""
    args = [sys.executable, "-m", "talon_rt.runtime.cli", "bench", "--engine", str(tiny_engine), "--dataset", "humaneval",
            "--limit", "5", "--warmup", "0", "--policies", "ar", "--max-new-tokens", "4", "--no-progress"]
    for _ in range(2):
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "warning" not in proc.stderr     # 5 prompts: enough
    outs = sorted((tmp_path / "runs").glob("bench-*/results.json"))
    assert len(outs) == 2 and outs[0].parent != outs[1].parent
    assert subprocess.run(["git", "check-ignore", "-q", "runs/bench-x/results.json"], cwd=ROOT).returncode == 0


def test_sweep_writes_default_budget(tiny_engine, tmp_path):
    from talon_rt.runtime.manifest import open_manifest
    engine = tmp_path / "engine"
    shutil.copytree(tiny_engine, engine)
    out = tmp_path / "out"
    proc = _bench("--engine", engine, "--dataset", "humaneval", "--limit", 1, "--warmup", 0, "--sweep",
                  "--budgets", "4,8", "--max-new-tokens", 8, "--write-defaults", "--out", out)
    data = json.loads((out / "results.json").read_text())
    best = data["best_budget"]["budget"]
    assert best in (4, 8) and {r["policy"] for r in data["rows"]} == {"ar", "talon"}
    assert f"best talon budget here: N={best}" in proc.stdout
    manifest = open_manifest(engine, verify_checksums=True)  # checksums still valid
    assert manifest.defaults["budget"] == best


def test_sweep_over_mu_and_root_k_writes_all_three(tiny_engine, tmp_path):
    from talon_rt.runtime.manifest import open_manifest
    engine = tmp_path / "engine"
    shutil.copytree(tiny_engine, engine)
    out = tmp_path / "out"
    proc = _bench("--engine", engine, "--dataset", "humaneval", "--limit", 1, "--warmup", 0, "--sweep",
                  "--budgets", "4", "--mu", "0.03,0.3", "--root-k", "1,10", "--max-new-tokens", 8,
                  "--write-defaults", "--out", out)
    data = json.loads((out / "results.json").read_text())
    talon = {(r["mu"], r["root_k"]) for r in data["rows"] if r["policy"] == "talon"}
    assert talon == {(0.03, 1), (0.03, 10), (0.3, 1), (0.3, 10)}
    best = data["best_budget"]
    assert len(best["candidates"]) == 4 and "(N=4, mu=0.3, K=1)" in proc.stdout
    manifest = open_manifest(engine, verify_checksums=True)
    assert (manifest.defaults["budget"], manifest.defaults["mu"], manifest.defaults["root_k"]) == \
        (4, best["mu"], best["root_k"])


@pytest.mark.parametrize("args, message", [
    (["--dataset", "alpaca"], "unknown dataset 'alpaca'"),
    (["--budgets", "8,x"], "expected comma-separated int values"),
    (["--policies", "ar,beam"], r"--policies: unknown \['beam'\]"),
    (["--budgets", "500"], r"--budgets: \[500\] outside \[1, limits.max_tree_tokens=64\]"),
    (["--max-new-tokens", "400"], "--max-new-tokens 400 leaves no room for a prompt"),
    (["--write-defaults"], "--write-defaults needs --sweep"),
    (["--top-p", "1.5"], r"--top-p 1.5: outside \(0, 1\]"),
    (["--peers", "--gguf", "no/such.gguf"], "--gguf no/such.gguf: no such file"),
])
def test_bench_errors(tiny_engine, tmp_path, args, message):
    proc = _bench("--engine", tiny_engine, "--limit", 1, "--out", tmp_path, *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("talon-rt bench: error:") and re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_synthetic_prints_microbench(capsys):
    from talon_rt.runtime.bench.__main__ import main
    assert main(["--synthetic", "--budgets", "8", "--policies", "talon"]) == 0
    assert "talon" in capsys.readouterr().out


def test_compare_engine_runs_interleaved_and_is_tabled_apart(tiny_engine, tiny_engine_gqa, tmp_path):
    out = tmp_path / "out"
    proc = _bench("--engine", tiny_engine, "--compare-engine", tiny_engine_gqa, "--dataset", "humaneval",
                  "--limit", 2, "--policies", "ar,talon", "--budgets", "8", "--max-new-tokens", 10, "--out", out)
    data = json.loads((out / "results.json").read_text())
    by_engine = {}
    for r in data["rows"]:
        by_engine.setdefault(r["engine"], set()).add((r["policy"], r["budget"]))
    assert by_engine == {"": {("ar", 1), ("talon", 8)}, str(tiny_engine_gqa): {("ar", 1), ("talon", 8)}}
    for r in data["rows"]:   # each engine's ar is its own baseline
        assert (r["speedup_vs_ar"] == 1.0) == (r["policy"] == "ar")
    assert [e["name"] for e in data["compare_engines"]] == ["tiny-gqa"]
    # interleaved: one prompt goes through both engines before the next prompt starts
    order = [(r["prompt_id"], r["config"]["engine"]) for r in data["prompt_runs"]]
    assert order[:4] == sorted(order[:4]) and {o[0] for o in order[:4]} == {order[0][0]}
    md = (out / "results.md").read_text()
    assert f"## The same prompts through tiny-gqa ({tiny_engine_gqa}: target weights float, float compute)" in md
    assert "talon (N=8, mu=0.03, K=10) [tiny-gqa]" in md and "## tiny-gqa" in proc.stdout
    # the main engine's plots and best budget only
    assert data["best_budget"]["candidates"].keys() == {"8"}


def test_compare_engine_must_tokenize_the_same(tiny_engine, tmp_path):
    other = edited_engine(tiny_engine, tmp_path / "other",
                          lambda m: m["tokenizer"].update(chat_template="{{ messages[0]['content'] }}"))
    proc = _bench("--engine", tiny_engine, "--compare-engine", other, "--limit", 1, "--out", tmp_path / "o",
                  check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--compare-engine {other}: its tokenizer or chat template differs" in proc.stderr
    proc = _bench("--engine", tiny_engine, "--compare-engine", tiny_engine, "--limit", 1, "--out", tmp_path / "o",
                  check=False)
    assert proc.returncode == 2 and "already in the run" in proc.stderr


def test_top_p_reaches_the_sampled_configurations_only(tiny_engine, tmp_path, monkeypatch):
    import argparse

    from talon_rt.runtime import api
    from talon_rt.runtime.bench import cli as bench_cli
    seen = []
    real_open = api.Generator.open

    def spy(engine, **opts):
        seen.append((opts["temperature"], opts.get("top_p")))
        return real_open(engine, **opts)

    monkeypatch.setattr(api.Generator, "open", staticmethod(spy))
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--engine", str(tiny_engine), "--limit", "1", "--policies", "ar",
                              "--temperature", "0,0.7", "--top-p", "0.95", "--max-new-tokens", "4",
                              "--out", str(tmp_path), "--no-progress"])
    assert args.func(args) == 0
    assert sorted(seen) == [(0.0, None), (0.7, 0.95)]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["top_p"] == 0.95
    assert "sampling (T > 0) with top-p 0.95" in (tmp_path / "results.md").read_text()
