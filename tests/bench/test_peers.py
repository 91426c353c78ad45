"""Peers: the unavailable paths (fast) and every configuration on the tiny target (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from talon_rt.runtime.bench.peers import PEERS, PeerPrompt, PeerSpec, run_peers, run_worker

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [PeerPrompt("rand", "a", [5, 9, 17, 33, 65, 129, 7, 11]), PeerPrompt("rand", "b", [3, 4, 5, 6, 3, 4, 5, 6])]


def test_missing_inputs_are_rows_with_reasons():
    rows = run_peers(PROMPTS, hf_model=None, draft_lm=None, max_new_tokens=4, threads=2)
    assert len(rows) == len(PEERS)
    reason = {"llamacpp": "unavailable: no --gguf given"}
    assert all(r["status"].startswith(reason.get(r["family"], "unavailable: no --hf-model given"))
               and r["tokens_per_s"] is None for r in rows)


def test_worker_reports_unavailable_family(tmp_path):
    job = {"threads": 2, "max_new_tokens": 4, "warmup": 0, "prompts": [], "cache_dir": str(tmp_path),
           "hf_model": str(tmp_path), "draft_lm": None}
    answer = run_worker(PeerSpec("nosuchlib", "greedy", "x"), job, timeout_s=60)
    assert answer["status"].startswith("unavailable: No module named 'talon_rt.runtime.bench.peers.nosuchlib'")


def _draft_lm(target, out):
    """A 1-layer Llama with the target's vocabulary: a standalone draft LM (weights only: its
    onnxruntime-genai build borrows the target's tokenizer files)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, LlamaForCausalLM
    cfg = AutoConfig.from_pretrained(target)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 1, 32, 64
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 1, 16
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.mark.slow
def test_every_peer_runs_beside_talon_rt(tiny_pair, tiny_engine, tmp_path):
    """`talon-rt bench --peers` on the tiny pair (in this Python): every configuration but llama.cpp's
    (no GGUF given) runs, and the greedy peers on the fp32 weights give talon-rt's own ar output token
    for token (same weights, same prompt ids, all modes greedy)."""
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    target = tiny_pair[0]
    draft = _draft_lm(target, tmp_path / "draft-lm")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "talon_rt.runtime.cli", "bench", "--engine", str(tiny_engine), "--dataset",
                           "humaneval", "--limit", "2", "--policies", "ar,talon", "--budgets", "8",
                           "--max-new-tokens", "16", "--peers", "--hf-model", str(target), "--draft-lm", str(draft),
                           "--peers-cache", str(tmp_path / "cache"), "--peers-here", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peers = json.loads((out / "results.json").read_text())["peers"]
    assert [p["peer"] for p in peers] == [p.label for p in PEERS]
    assert all(p["status"].startswith("unavailable: no --gguf given") for p in peers if p["family"] == "llamacpp")
    peers = [p for p in peers if p["family"] != "llamacpp"]
    for p in peers:
        assert p["status"] == "ok", p
        assert p["tokens_per_s"] > 0 and p["prompts"] == 2 and p["talon_rt_ar_over_peer"] > 0
        if p["same_weights"]:  # every mode here is lossless greedy on the same fp32 weights
            assert p["same_output_as_ar"] == "2/2", p
        else:
            assert p["same_output_as_ar"].endswith("/2 (speed only)"), p
    assert peers[0]["tau"] == pytest.approx(1.0)
    assert "same output as ar" in (out / "results.md").read_text()
