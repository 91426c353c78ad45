"""Peers: the unavailable paths (fast) and every configuration on the tiny target (slow)."""

import shutil

import pytest

from runtime.bench.peers import PEERS, PeerPrompt, PeerSpec, run_peers, run_worker

PROMPTS = [PeerPrompt("rand", "a", [5, 9, 17, 33, 65, 129, 7, 11]), PeerPrompt("rand", "b", [3, 4, 5, 6, 3, 4, 5, 6])]


def test_missing_inputs_are_rows_with_reasons():
    rows = run_peers(PROMPTS, hf_model=None, draft_lm=None, max_new_tokens=4, threads=2)
    assert len(rows) == len(PEERS)
    assert all(r["status"].startswith("unavailable: no --hf-model given") and r["tokens_per_s"] is None for r in rows)


def test_worker_reports_unavailable_family(tmp_path):
    job = {"threads": 2, "max_new_tokens": 4, "warmup": 0, "prompts": [], "cache_dir": str(tmp_path),
           "hf_model": str(tmp_path), "draft_lm": None}
    answer = run_worker(PeerSpec("nosuchlib", "greedy", "x"), job, timeout_s=60)
    assert answer["status"].startswith("unavailable: No module named 'runtime.bench.peers.nosuchlib'")


def _draft_lm(target, out):
    """A 1-layer Llama with the target's vocabulary and tokenizer: a standalone draft LM."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, LlamaForCausalLM
    cfg = AutoConfig.from_pretrained(target)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 1, 32, 64
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 1, 16
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in target.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy2(f, out / f.name)
    return out


@pytest.mark.slow
def test_every_peer_runs_on_the_tiny_target(tiny_pair, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    target = tiny_pair[0]
    draft = _draft_lm(target, tmp_path / "draft-lm")
    rows = run_peers(PROMPTS, hf_model=str(target), draft_lm=str(draft), max_new_tokens=16, threads=2,
                     cache_dir=tmp_path / "cache", timeout_s=600)
    assert [r["peer"] for r in rows] == [p.label for p in PEERS]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0 and r["prompts"] == 2 and r["new_tokens"] > 0
    greedy = rows[0]
    assert greedy["tau"] == pytest.approx(1.0)
