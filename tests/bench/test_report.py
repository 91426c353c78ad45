"""The benchmark's run loop, metrics and writers, against a Generator-like test double."""

import json
from dataclasses import dataclass

import pytest

from talon_rt.runtime.bench import metrics, plots, report
from talon_rt.runtime.bench.datasets import Prompt
from talon_rt.runtime.bench.runner import BenchConfig, RunPlan, make_configs, run_plan
from talon_rt.runtime.stats import RoundStats, RunStats


@dataclass
class _Result:
    tokens: list
    stop_reason: str
    stats: RunStats


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
        emitted = 1 + len(layers) // 2
        n_rounds = (max_new_tokens - 1) // emitted
        truncated = 1 if self.config.policy == "talon" else 0
        rnd = RoundStats(tree_size=1 + sum(layers), depth=len(layers), nodes_per_layer=layers,
                         draft_calls=len(layers), accepted=emitted - 1, emitted=emitted, engine_s=0.01,
                         host_s=0.001, pool_truncated=truncated)
        per_round = (rnd,) * n_rounds
        stats = RunStats(policy=self.config.policy, prompt_tokens=len(prompt_ids), generated=1 + n_rounds * emitted,
                         rounds=n_rounds, target_calls=n_rounds + 1, draft_calls=n_rounds * len(layers) + 1,
                         prefill_s=0.005, decode_s=0.011 * n_rounds, engine_s=0.01 * n_rounds,
                         host_s=0.001 * n_rounds, per_round=per_round)
        return _Result(list(range(stats.generated)), "max_new_tokens", stats)

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
    assert [c for _, c in measured[n:2 * n]] == configs[1:] + configs[:1]  # rotated start
    for i in range(5):
        block = measured[i * n:(i + 1) * n]
        assert len({ids for ids, _ in block}) == 1 and {c for _, c in block} == set(configs)
    assert all(g.closed for g in opened)
    assert len(runs) == 5 * n
    assert plan.truncated_prompts and all(len(ids) <= 6 for ids, _ in log)


def test_rows_metrics(tmp_path):
    _, _, runs, _, _ = _run(tmp_path)
    rows = metrics.build_rows(runs)
    assert len(rows) == 2 * 6
    key = {(r["dataset"], r["policy"], r["budget"]): r for r in rows}
    ar = key[("humaneval", "ar", 1)]
    assert ar["speedup_vs_ar"] == pytest.approx(1.0) and ar["tau"] == pytest.approx(1.0)
    assert ar["delta"] == 0 and ar["depth_hist"] == {"0": 3 * 11}
    talon = key[("humaneval", "talon", 8)]
    assert talon["delta"] == pytest.approx(4.0) and talon["tau"] == pytest.approx(3.0)
    assert talon["rounds"] == 3 * 3 and talon["new_tokens"] == 3 * 10
    assert talon["depth_hist"] == {"4": 9} and talon["width_hist"] == {"10": 9}
    assert talon["depth_width"] == [[4, 10, 9]] and talon["tree_size_mean"] == 18
    assert talon["pool_truncations"] == 9
    assert talon["host_share"] == pytest.approx(0.001 / 0.011)
    for r in rows:
        for k in ("dataset", "policy", "budget", "temperature", "tau", "delta", "tokens_per_s", "speedup_vs_ar"):
            assert k in r
    best = metrics.best_budget(rows)
    assert best["policy"] == "talon" and best["budget"] in (4, 8)


def test_writers(tmp_path):
    plan, configs, runs, _, _ = _run(tmp_path, temperatures=(0.0, 1.0))
    rows = metrics.build_rows(runs)
    peers = [{"dataset": "humaneval", "peer": "ort-genai greedy", "tokens_per_s": 50.0, "tau": 1.0, "status": "ok",
              "tokens_per_s_p10": 40.0, "tokens_per_s_p90": 61.5},
             {"dataset": "humaneval", "peer": "ort-genai draft-model", "tokens_per_s": None, "tau": None,
              "status": "unavailable: no --draft-lm given"}]
    settings = {"datasets": ["humaneval", "mtbench"], "prompts_per_dataset": 3, "warmup": 1,
                "max_new_tokens": 12, "threads": 2}
    results = report.build_results(rows=rows, runs=runs, settings=settings, engine={"name": "fake"},
                                   peers=peers, best=metrics.best_budget(rows), command=["bench"])
    out = tmp_path / "out"
    out.mkdir()
    written = plots.write_plots(rows, out, peers)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["speedup_vs_budget.png", "tokens_per_s.png",
                                                            "tree_depth_width.png"]
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
    assert "![tokens_per_s](tokens_per_s.png)" in text
    assert "| ort-genai greedy | 50.0 | 40.0–61.5 |" in text     # the peer's spread beside its median
    assert "TTFT ms (median)" in text and "tok/s p10–p90" in text


def test_spread_and_time_to_first_token(tmp_path):
    _, _, runs, _, _ = _run(tmp_path)
    walls = [0.1, 0.2, 0.3, 0.4, 0.9]
    firsts = [0.01, 0.02, 0.03, 0.04, 0.05]
    import dataclasses
    ar = [r for r in runs if r.config.policy == "ar" and r.dataset == "humaneval"]
    varied = [dataclasses.replace(r, wall_s=w, ttft_s=f) for r, w, f in zip(ar, walls, firsts)]
    row = metrics.summarize(varied)
    tps = sorted(r.tokens_per_s for r in varied)
    assert row["tokens_per_s"] == tps[1]
    assert row["tokens_per_s_p10"] == pytest.approx(tps[0] + 0.2 * (tps[1] - tps[0]))   # linear, 3 samples
    assert row["tokens_per_s_p90"] == pytest.approx(tps[1] + 0.8 * (tps[2] - tps[1]))
    assert row["ttft_s"] == 0.02 and row["ttft_s_p10"] == pytest.approx(0.012)
    assert runs[0].ttft_s == 0.005      # the runtime's prefill_s: prompt in, first token out
    assert report.detail_table([row])[2].split(" | ")[4:7] == [f"{tps[0] + 0.2 * (tps[1] - tps[0]):.1f}–"
                                                             f"{tps[1] + 0.8 * (tps[2] - tps[1]):.1f}",
                                                             "20.0", "12.0–28.0"]
