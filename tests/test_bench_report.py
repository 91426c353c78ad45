"""The benchmark's run loop, metrics and writers, against a Generator-like test double."""

import json
from dataclasses import dataclass, field

import pytest

from runtime.bench import metrics, plots, report
from runtime.bench.datasets import Prompt
from runtime.bench.runner import BenchConfig, RunPlan, make_configs, run_plan


@dataclass(frozen=True)
class _Round:
    nodes_per_layer: tuple
    pool_truncated: int = 0


@dataclass
class _Stats:
    tau: float
    delta: float
    tokens_per_s: float
    target_calls: int
    draft_calls: int
    engine_s: float
    host_s: float
    round_records: list = field(default_factory=list)


@dataclass
class _Result:
    tokens: list
    stop_reason: str
    stats: _Stats


class FakeGenerator:
    """Policy-shaped numbers: deeper trees accept more; no engine behind it."""

    SHAPES = {"ar": (), "chain": (1, 1, 1), "eagle3": (10, 10, 10), "talon": (10, 4, 2, 1)}

    def __init__(self, config: BenchConfig, log: list):
        self.config, self.log, self.closed = config, log, False

    def encode(self, text):
        return [ord(c) % 50 + 3 for c in text]

    def generate(self, prompt_ids, max_new_tokens):
        self.log.append((tuple(prompt_ids), self.config))
        layers = self.SHAPES[self.config.policy]
        per_call = 1 + len(layers) * 0.5
        calls = max(1, int(max_new_tokens / per_call))
        rounds = [_Round(layers, pool_truncated=1 if self.config.policy == "talon" else 0)] * (calls if layers else 0)
        stats = _Stats(tau=max_new_tokens / calls, delta=len(layers), tokens_per_s=100.0 * per_call,
                       target_calls=calls, draft_calls=calls * len(layers), engine_s=0.01 * calls,
                       host_s=0.001 * calls, round_records=rounds)
        return _Result(list(range(max_new_tokens)), "max_new_tokens", stats)

    def close(self):
        self.closed = True


def _run(tmp_path, temperatures=(0.0,)):
    prompts = [Prompt("humaneval", str(i), f"def f{i}(x):") for i in range(3)]
    prompts += [Prompt("mtbench", str(i), f"Write {i}") for i in range(2)]
    configs = make_configs(["talon", "ar", "eagle3", "chain"], [4, 8], temperatures, [0.03], chain_depth=3)
    log, opened = [], []

    def open_gen(c):
        opened.append(FakeGenerator(c, log))
        return opened[-1]

    plan = RunPlan(prompts, configs, max_new_tokens=12, max_prompt_tokens=6, warmup=1)
    runs = run_plan(plan, open_gen, progress=False)
    return plan, configs, runs, log, opened


def test_configs_and_interleaving(tmp_path):
    plan, configs, runs, log, opened = _run(tmp_path)
    assert [c.label for c in configs] == ["ar N=1 T=0", "chain N=4 T=0", "eagle3 N=4 T=0", "eagle3 N=8 T=0",
                                          "talon N=4 mu=0.03 T=0", "talon N=8 mu=0.03 T=0"]
    n = len(configs)
    # warm-up: the first prompt once through every config, then prompt-major
    assert [c for _, c in log[:n]] == configs
    measured = log[n:]
    assert len(measured) == 5 * n and [c for _, c in measured[:n]] == configs
    assert all(len(set(ids for ids, _ in measured[i * n:(i + 1) * n])) == 1 for i in range(5))
    assert all(g.closed for g in opened)
    assert len(runs) == 5 * n
    assert plan.truncated_prompts and all(len(ids) <= 6 for ids, _ in log)


def test_rows_metrics(tmp_path):
    _, _, runs, _, _ = _run(tmp_path)
    rows = metrics.build_rows(runs)
    assert len(rows) == 2 * 6
    key = {(r["dataset"], r["policy"], r["budget"]): r for r in rows}
    ar = key[("humaneval", "ar", 1)]
    assert ar["speedup_vs_ar"] == pytest.approx(1.0) and ar["rounds"] == 0
    talon = key[("humaneval", "talon", 8)]
    assert talon["delta"] == pytest.approx(4.0)
    assert talon["tau"] == pytest.approx(12 / 4)
    assert talon["depth_hist"] == {"4": 3 * 4} and talon["width_hist"] == {"10": 12}
    assert talon["pool_truncations"] == 12
    assert talon["host_share"] == pytest.approx(0.001 / 0.011)
    for r in rows:
        for k in ("dataset", "policy", "budget", "temperature", "tau", "delta", "tokens_per_s", "speedup_vs_ar"):
            assert k in r
    best = metrics.best_budget(rows)
    assert best["policy"] == "talon" and best["budget"] in (4, 8)


def test_writers(tmp_path):
    plan, configs, runs, _, _ = _run(tmp_path, temperatures=(0.0, 1.0))
    rows = metrics.build_rows(runs)
    peers = [{"dataset": "humaneval", "peer": "ort-genai greedy", "tokens_per_s": 50.0, "tau": 1.0, "status": "ok"},
             {"dataset": "humaneval", "peer": "ort-genai draft-model", "tokens_per_s": None, "tau": None,
              "status": "unavailable: no --draft-lm given"}]
    settings = {"datasets": ["humaneval", "mtbench"], "prompts_per_dataset": 3, "warmup": 1,
                "max_new_tokens": 12, "threads": 2}
    results = report.build_results(rows=rows, runs=runs, settings=settings, engine={"name": "fake"},
                                   peers=peers, best=metrics.best_budget(rows), command=["bench"])
    out = tmp_path / "out"
    out.mkdir()
    written = plots.write_plots(rows, out)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["speedup_vs_budget.png", "tree_depth_width.png"]
    for p in written:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    js, md = report.write_results(out, results, written)
    data = json.loads(js.read_text())
    assert data["rows"] and data["machine"]["cores"] and "onnxruntime" in data["versions"]
    assert "commit" in data["git"] and len(data["prompt_runs"]) == len(runs)
    assert {r["temperature"] for r in data["rows"]} == {0.0, 1.0}
    text = md.read_text()
    assert "### T = 0" in text and "### T = 1" in text and "humaneval τ" in text
    assert "unavailable: no --draft-lm given" in text and "![speedup_vs_budget](speedup_vs_budget.png)" in text
