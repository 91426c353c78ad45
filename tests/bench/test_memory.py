"""`python -m talon_rt.runtime.bench.memory`: RSS per call over many contexts, against weights + KV."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from talon_rt.runtime.bench import memory
from talon_rt.runtime.manifest import open_manifest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_memory_report_is_consistent(tiny_engine_gqa, tmp_path, capsys):
    out = tmp_path / "mem.json"
    assert memory.main(["--engine", str(tiny_engine_gqa), "--policy", "talon", "--tokens", "300",
                        "--per-call", "100", "--json", str(out)]) == 0
    r = json.loads(out.read_text())

    assert r["policy"] == "talon" and r["per_call"] == 100
    assert r["calls"] == len(r["samples"]) >= 3                 # 300 tokens, <= 100 per call
    assert [s["tokens_total"] for s in r["samples"]] == list(np.cumsum([s["tokens"] for s in r["samples"]]))
    assert r["tokens_generated"] == r["samples"][-1]["tokens_total"] == 300
    assert all(s["tokens"] <= 100 for s in r["samples"])

    m = open_manifest(tiny_engine_gqa)
    assert r["weight_bytes"] == sum(m.files[g.file].bytes for g in m.graphs.values())
    md, dd, S = m.model, m.draft, m.limits.max_seq_len
    assert r["kv_buffers"] == {"target_cache": 2 * md.num_layers * md.num_kv_heads * S * md.head_dim * 4,
                               "draft_cache": 2 * dd.num_kv_heads * S * dd.head_dim * 4}   # fp32, gqa: no new rows
    assert r["reference_bytes"] == r["weight_bytes"] + r["kv_bytes"]
    assert math.isclose(r["ratio"], r["peak_rss_bytes"] / r["reference_bytes"])
    assert math.isclose(r["peak_rss_mb"], r["peak_rss_bytes"] / 1e6)
    assert math.isclose(r["growth_mb"], (r["samples"][-1]["rss_bytes"] - r["samples"][0]["rss_bytes"]) / 1e6)
    assert r["peak_rss_bytes"] >= max(s["rss_bytes"] for s in r["samples"]) > 0

    printed = capsys.readouterr().out
    assert "peak RSS" in printed and f"ratio {r['ratio']:.2f}" in printed


def test_memory_errors_are_one_line(tmp_path, capsys):
    assert memory.main(["--engine", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m talon_rt.runtime.bench.memory: error: engine directory not found")
    assert err.count("\n") == 1
