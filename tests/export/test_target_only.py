"""Engines without an EAGLE-3 head: export without --draft, run `ar`, refuse drafting policies by
name; the context chosen from the model's config; generation_config.json's sampling defaults."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import OptionError

TALON_RT = Path(sys.executable).parent / "talon-rt"
PROMPT = [1, 5, 9, 40]


def test_manifest_has_no_draft_and_defaults_to_ar(tiny_target_engine):
    m = json.loads((tiny_target_engine / "manifest.json").read_text())
    assert m["draft"] is None
    assert set(m["graphs"]) == {"target"}
    assert sorted(p.name for p in tiny_target_engine.iterdir()) == ["manifest.json", "target.onnx", "tokenizer.json"]
    assert m["defaults"]["policy"] == "ar"
    assert m["defaults"]["max_new_tokens"] == -1


def test_context_from_the_model_config(tiny_target_engine, tiny_pair):
    cfg = json.loads((tiny_pair[0] / "config.json").read_text())
    m = json.loads((tiny_target_engine / "manifest.json").read_text())
    # the tiny model's KV cache is far below the budget: its whole trained context
    assert m["limits"]["max_seq_len"] == cfg["max_position_embeddings"] == 4096


def test_auto_context_rule():
    from talon_rt.export.build import CONTEXT_KV_BYTES, auto_max_seq_len
    small = SimpleNamespace(context_length=8192, num_layers=30, num_kv_heads=3, head_dim=64)
    assert auto_max_seq_len(small, 4, 128)[0] == 8192            # SmolLM2 fp32: 360 MiB of KV
    big = SimpleNamespace(context_length=131072, num_layers=32, num_kv_heads=8, head_dim=128)
    S, why = auto_max_seq_len(big, 2, 128)                         # Llama 3 8B fp16: 128 KiB per row
    assert S == CONTEXT_KV_BYTES // (2 * 32 * 8 * 128 * 2) == 8192
    assert "131072" in why and "1024 MiB" in why
    none = SimpleNamespace(context_length=None, num_layers=2, num_kv_heads=1, head_dim=8)
    assert auto_max_seq_len(none, 4, 128)[0] == 2048               # no context in the config
    tiny = SimpleNamespace(context_length=64, num_layers=2, num_kv_heads=1, head_dim=8)
    assert auto_max_seq_len(tiny, 4, 128)[0] == 128                # never below the largest call


def test_ar_output_equals_the_full_engines(tiny_target_engine, tiny_engine):
    with Generator.open(tiny_engine, policy="ar") as full, Generator.open(tiny_target_engine) as bare:
        assert bare.options.policy == "ar"
        assert bare.generate(PROMPT, max_new_tokens=24).tokens == full.generate(PROMPT, max_new_tokens=24).tokens


@pytest.mark.parametrize("policy", ["talon", "chain", "eagle3", "talon-cost"])
def test_drafting_policy_is_a_clear_error(tiny_target_engine, policy):
    with pytest.raises(OptionError, match=rf"option policy: '{policy}' drafts with an EAGLE-3 head, and engine "
                                          r"'tiny-target' .* has none \(target-only"):
        Generator.open(tiny_target_engine, policy=policy)


def test_cli_run_inspect_and_refusal(tiny_target_engine):
    r = subprocess.run([str(TALON_RT), "run", "-e", str(tiny_target_engine), "--prompt-ids", "1,5,9,40", "-n", "8",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["policy"] == "ar" and len(json.loads(r.stdout)["tokens"]) == 8
    r = subprocess.run([str(TALON_RT), "run", "-e", str(tiny_target_engine), "--prompt-ids", "1", "--policy", "talon"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'talon' drafts with an EAGLE-3 head" in r.stderr and "tiny-target" in r.stderr
    r = subprocess.run([str(TALON_RT), "inspect", "--engine", str(tiny_target_engine)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "draft       none: a target-only engine" in r.stdout and "graphs      target=target.onnx" in r.stdout


def test_manifest_with_draft_graphs_but_no_draft_is_refused(tiny_engine, tmp_path):
    from tests.helpers import edited_engine
    from talon_rt.runtime.errors import EngineError
    from talon_rt.runtime.manifest import open_manifest
    bad = edited_engine(tiny_engine, tmp_path / "e", lambda m: m.update(draft=None))
    with pytest.raises(EngineError, match=r"graphs.draft_fc: present, but draft is null"):
        open_manifest(bad)
    gone = edited_engine(tiny_engine, tmp_path / "g", lambda m: m.pop("draft"))
    with pytest.raises(EngineError, match=r"manifest.json: draft: missing \(null for a target-only engine\)"):
        open_manifest(gone)


def test_serves_chat_completions(tiny_target_engine, tmp_path):
    pytest.importorskip("fastapi")
    from tests.serve.test_api import TEMPLATE, serving
    from tests.helpers import edited_engine
    import httpx
    eng = edited_engine(tiny_target_engine, tmp_path / "chat",
                        lambda m: m["tokenizer"].update(chat_template=TEMPLATE))
    with Generator.open(eng) as ref:
        want = ref.chat([{"role": "user", "content": "hi"}], max_new_tokens=6).text
    with serving([Generator.open(eng, threads=1)]) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want


def _hf_copy(tiny_pair, tmp_path, gen_config: dict) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_pair[0], model)
    (model / "generation_config.json").write_text(json.dumps(gen_config))
    return model


def test_generation_config_sampling_defaults(tiny_pair, tmp_path):
    from talon_rt.export.checkpoints import HFFolder
    from talon_rt.export.errors import CheckpointError
    sample = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "bos_token_id": 1}
    assert HFFolder(_hf_copy(tiny_pair, tmp_path / "a", sample)).sampling_defaults() == \
        {"temperature": 0.7, "top_p": 0.9, "top_k": 40}
    # transformers decodes greedily without do_sample: the other fields are unused
    assert HFFolder(_hf_copy(tiny_pair, tmp_path / "b", {"temperature": 0.7})).sampling_defaults() == {}
    with pytest.raises(CheckpointError, match=r"generation_config.json: top_p 1.5 is not a number in \(0, 1\]"):
        HFFolder(_hf_copy(tiny_pair, tmp_path / "c", {"do_sample": True, "top_p": 1.5})).sampling_defaults()


def test_generation_config_becomes_manifest_defaults(tiny_pair, tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    model = _hf_copy(tiny_pair, tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20})
    opts = ExportOptions(max_seq_len=256, defaults=(("top_k", 10),))   # an explicit --default wins
    out = export_engine(model, None, tmp_path / "e", opts)
    d = json.loads((out / "manifest.json").read_text())["defaults"]
    assert (d["temperature"], d["top_p"], d["top_k"]) == (0.6, 0.95, 10)
    with Generator.open(out) as gen:
        assert (gen.options.temperature, gen.options.top_p, gen.options.top_k) == (0.6, 0.95, 10)
