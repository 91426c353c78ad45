"""The micro-benchmark runs and reports every figure (a smoke test; timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys

from talon_rt.talon.microbench import main, run_filter_bench, run_microbench


def test_run_microbench_reports_each_policy_and_budget():
    res = run_microbench(budgets=(4, 16), policies=("talon", "eagle3", "chain", "ar"), rounds=5,
                         sample_rounds=2)
    assert set(res) == {"talon", "eagle3", "chain", "ar"} and set(res["talon"]) == {4, 16}
    keys = {"layer_us", "build_us", "mask_us", "verify_us", "round_us", "sample_verify_us", "layers"}
    assert set(res["eagle3"][16]) == keys
    assert res["eagle3"][16]["layers"] == 8.0 and res["talon"][16]["round_us"] > 0


def test_main_prints_a_table(capsys):
    main(["--rounds", "3", "--budgets", "8", "--policies", "talon"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("policy") and lines[1].split()[:2] == ["talon", "8"]


def test_talon_imports_numpy_only():
    code = ("import sys, talon_rt.talon, talon_rt.talon.microbench, talon_rt.talon.synthetic; "
            "print(sorted({m.split('.')[m.startswith('talon_rt.')] for m in sys.modules} & {'torch', 'runtime', 'export', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_peaked_canned_draft_makes_deep_talon_trees():
    deep = run_microbench(budgets=(16,), policies=("talon",), rounds=3, sample_rounds=1, draft="peaked")
    wide = run_microbench(budgets=(16,), policies=("talon",), rounds=3, sample_rounds=1, draft="flat")
    assert deep["talon"][16]["layers"] == 6.0 and wide["talon"][16]["layers"] == 2.0


def test_filter_bench_times_each_step_on_each_row(capsys):
    res = run_filter_bench(reps=3, vocab=4096)
    assert set(res) == {"peaked", "flat"}
    assert set(res["flat"]) == {"softmax", "nucleus", "top_p", "all", "sample"}
    assert all(t > 0 for s in res.values() for t in s.values())
    main(["--filters", "--rounds", "30"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["row", "softmax", "nucleus"] and [ln.split()[0] for ln in lines[1:]] == ["peaked", "flat"]
