"""`talon-rt bench --peers` on SmolLM2-135M-Instruct (the GGUF of `make smollm2`), end to end, one
prompt x 16 tokens (correctness only, no timing claims): llama.cpp on the GGUF, onnxruntime-genai
fp32 and int4 and transformers on the dequantized folder, each in its own virtualenv under the peers'
cache (built on first use: llama-cpp-python's build takes minutes to hours on two shared cores).

Slow: `make test-slow`. The fp32 peers must emit talon-rt's fp32 `ar` tokens; llama.cpp and int4
only have to run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.test_smollm2 import smollm2_gguf

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_every_peer_runs_on_the_real_model(tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.export.checkpoints import load_target
    from talon_rt.export.hf_folder import write_hf_folder
    from talon_rt.export.tiny import write_random_head
    gguf = smollm2_gguf()
    head = write_random_head(load_target(gguf), tmp_path / "head", draft_vocab=4096, seed=0)
    engine = export_engine(gguf, head, tmp_path / "engine", ExportOptions(max_seq_len=512, max_tree_tokens=32,
                                                                          max_prefill_chunk=128))
    hf = write_hf_folder(gguf, tmp_path / "hf")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "talon_rt.runtime.cli", "bench", "--engine", str(engine), "--dataset",
                           "humaneval", "--limit", "1", "--policies", "ar", "--max-new-tokens", "16", "--warmup", "0",
                           "--peers", "--gguf", str(gguf), "--hf-model", str(hf), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=6 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for p in results["peers"]:
        if p["peer"].endswith("(draft LM)") or "draft-model" in p["peer"]:
            assert p["status"].startswith("unavailable: no --draft-lm given"), p
            continue
        assert p["status"] == "ok" and p["tokens_per_s"] > 0 and p["prompts"] == 1, p
        if p["same_weights"]:
            assert p["same_output_as_ar"] == "1/1", p
        else:
            assert p["same_output_as_ar"].endswith(" (speed only)"), p
    llama = next(p for p in results["peers"] if p["family"] == "llamacpp" and p["mode"] == "greedy")
    assert llama["detail"]["llama-cpp-python"] == "0.3.36" and llama["detail"]["n_threads"] == 2
    assert "GGML_NATIVE" in llama["detail"]["cmake_args"]
    assert "Peer settings" in (out / "results.md").read_text()
