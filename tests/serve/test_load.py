"""The loopback load test of `talon-rt serve` (runtime/serve/loadtest.py), a slow mark (`make test-slow`,
~5-10 min on 2 shared cores): the stdlib pair (models/stdlib-pair) exported gqa with the int4 draft,
--instances 2, 16 concurrent streaming clients x 4 requests, every response equal token for token to
`talon-rt run`'s greedy output, no errors, the server's RSS flat. Loopback only; bounded by the load
test's --timeout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openai")

DEMO = Path(__file__).resolve().parents[2] / "models" / "stdlib-pair"


@pytest.mark.slow
def test_sixteen_streaming_clients_on_two_instances(tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.runtime.serve.loadtest import main

    engine = export_engine(DEMO / "target", DEMO / "eagle3", tmp_path / "demo",
                           ExportOptions(flavour="gqa", draft_weights="int4"), name="demo")
    out = tmp_path / "load.json"
    code = main(["--engine", str(engine), "--instances", "2", "--clients", "16", "--requests", "4",
                 "--timeout", "1500", "--out", str(out)])
    report = json.loads(out.read_text())
    print(json.dumps({k: report[k] for k in ("wall_s", "tokens_per_s", "ttft_s", "per_token_s", "rss_mb")}))
    assert report["errors"] == [] and report["mismatched"] == [] and report["unfinished"] == []
    assert report["completed"] == 64 and report["rss_flat"], report["rss_mb"]
    assert code == 0
