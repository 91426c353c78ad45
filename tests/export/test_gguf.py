"""GGUF targets: a tiny GGUF the test writes (gguf's writer, llama.cpp's q/k permutation, ChatML
specials) read by export/gguf.py against transformers' own GGUF loader, exported to an engine whose
greedy output equals transformers' greedy decoding of the same dequantized weights, with the chat
template and its end-of-turn id in the manifest. Seconds; no downloads, no 93 MB wheel."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from talon_rt.export.build import ExportOptions, export_engine
from talon_rt.export.errors import CheckpointError
from talon_rt.export.gguf import GGUFModel
from talon_rt.export.tiny import CHATML, make_tiny_pair, write_gguf

IM_END = 4  # CHAT_SPECIALS: <|im_start|> = 3, <|im_end|> = 4


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("chat_pair"), seed=3, chat=True)


@pytest.fixture(scope="module")
def gguf_file(chat_pair, tmp_path_factory):
    return write_gguf(chat_pair[0], tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf", "Q8_0")


@pytest.fixture(scope="module")
def gguf_engine(gguf_file, chat_pair, tmp_path_factory):
    opts = ExportOptions(max_seq_len=256, max_tree_tokens=32, max_prefill_chunk=64, k_max=16)
    return export_engine(gguf_file, chat_pair[1], tmp_path_factory.mktemp("eng") / "gguf", opts)


def _transformers(gguf_path):
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                             dtype=torch.float32).eval()


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_reader_equals_transformers_gguf_loader(chat_pair, tmp_path, qtype):
    path = write_gguf(chat_pair[0], tmp_path / f"t.{qtype}.gguf", qtype)
    g = GGUFModel.open(path)
    ours, _ = g.tensors()
    theirs = _transformers(path).state_dict()
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    assert g.quantization == ("ALL_F32" if qtype == "F32" else qtype)
    cfg = json.loads((chat_pair[0] / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size"):
        assert g.config[key] == cfg[key], key
    assert g.chat_template == CHATML


def test_f32_gguf_undoes_the_qk_permutation_exactly(chat_pair, tmp_path):
    from safetensors.torch import load_file
    ours, _ = GGUFModel.open(write_gguf(chat_pair[0], tmp_path / "t.gguf", "F32")).tensors()
    hf = load_file(str(chat_pair[0] / "model.safetensors"))
    for k, v in hf.items():
        assert torch.equal(ours[k], v.float()), k
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"][1],
                           ours["model.layers.0.self_attn.q_proj.weight"][8])


def test_raw_blocks_are_the_files_rows_in_hf_order(gguf_file):
    import gguf
    g = GGUFModel.open(gguf_file)
    kind, rows = g.raw_blocks("model.layers.1.self_attn.k_proj.weight")
    deq = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[kind])
    ours, _ = g.tensors()
    assert kind == "Q8_0" and torch.equal(torch.from_numpy(deq), ours["model.layers.1.self_attn.k_proj.weight"])
    assert g.raw_blocks("model.norm.weight") is None


def test_gguf_engine_matches_transformers_greedy_and_carries_the_chat_template(gguf_engine, gguf_file):
    from talon_rt.runtime.api import Generator
    m = json.loads((gguf_engine / "manifest.json").read_text())
    assert m["source"] == {"format": "gguf", "name": "tiny.Q8_0.gguf", "quantization": "Q8_0"}
    assert m["tokenizer"]["chat_template"] == CHATML and m["tokenizer"]["stop_ids"] == [2, IM_END]
    hf = _transformers(gguf_file)
    messages = [{"role": "user", "content": "def fib(n):"}]
    with Generator.open(gguf_engine, policy="ar", temperature=0.0) as gen:
        text = gen.render_chat(messages)
        assert text == "<|im_start|>user\ndef fib(n):<|im_end|>\n<|im_start|>assistant\n"
        ids = gen.encode(text)
        assert ids[0] == 3 and IM_END in ids
        ours = gen.generate(ids, max_new_tokens=24).tokens
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=len(ours), do_sample=False,
                          eos_token_id=[2, IM_END], pad_token_id=0)[0, len(ids):].tolist()
    assert ours == ref
    for policy in ("talon", "eagle3", "chain"):
        with Generator.open(gguf_engine, policy=policy, budget=8, temperature=0.0) as gen:
            assert gen.generate(ids, max_new_tokens=24).tokens == ours, policy


def test_generation_stops_at_the_end_of_turn_token(gguf_engine):
    from talon_rt.runtime.api import Generator
    with Generator.open(gguf_engine, policy="ar") as gen:
        ids = gen.encode(gen.render_chat([{"role": "user", "content": "x = 1"}]))
        free = gen.generate(ids, max_new_tokens=64).tokens
    m = json.loads((gguf_engine / "manifest.json").read_text())
    m["tokenizer"]["stop_ids"] = [2, free[2]]   # make the third generated token an end-of-turn
    (gguf_engine / "manifest.json").write_text(json.dumps(m))
    try:
        with Generator.open(gguf_engine, policy="talon", budget=8) as gen:
            res = gen.generate(ids, max_new_tokens=64)
        assert res.stop_reason == "eos" and res.tokens == free[:free.index(free[2]) + 1]
    finally:
        m["tokenizer"]["stop_ids"] = [2, IM_END]
        (gguf_engine / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


def test_hf_folder_chat_template_goes_into_the_manifest(chat_pair, tmp_path):
    opts = ExportOptions(max_seq_len=128, max_tree_tokens=16, max_prefill_chunk=32, k_max=8)
    out = export_engine(chat_pair[0], chat_pair[1], tmp_path / "hf", opts)
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == {"format": "hf", "name": "target", "quantization": None}
    assert m["tokenizer"]["chat_template"] == CHATML and m["tokenizer"]["stop_ids"] == [2, IM_END]


def test_chat_on_an_engine_without_template_is_an_input_error(tiny_engine):
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.errors import InputError
    with Generator.open(tiny_engine) as gen, pytest.raises(InputError, match="no chat template"):
        gen.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"), ("hi", "non-empty list"), ([{"role": "robot", "content": "x"}], r"messages\[0\].role"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content"), ([["user", "x"]], r"messages\[0\]")])
def test_bad_messages_are_named_input_errors(gguf_engine, messages, match):
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.errors import InputError
    with Generator.open(gguf_engine) as gen, pytest.raises(InputError, match=match):
        gen.chat(messages)


def test_cli_chat_and_inspect(gguf_engine):
    run = [sys.executable, "-m", "talon_rt.runtime.cli"]
    r = subprocess.run(run + ["run", "--engine", str(gguf_engine), "--chat", "def fib(n):", "--system", "Be brief.",
                              "--max-new-tokens", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["tokens"]) <= 8
    r = subprocess.run(run + ["run", "--engine", str(gguf_engine), "--prompt", "x", "--system", "Be brief."],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--system needs --chat" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(run + ["inspect", str(gguf_engine)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "GGUF tiny.Q8_0.gguf (Q8_0)" in r.stdout and "chat template" in r.stdout
    assert "target weights float" in r.stdout


def test_not_a_gguf_and_unsupported_architecture_are_named(tmp_path, gguf_file):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(CheckpointError, match="model.gguf: not a GGUF file"):
        GGUFModel.open(bad)
    import gguf
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match="general.architecture 'gpt2' is not supported"):
        GGUFModel.open(other).config


@pytest.mark.parametrize("raw", [False, True])
def test_bench_applies_the_chat_template_unless_raw(gguf_engine, tmp_path, raw):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "def fib(n):"}) + "\n")
    cmd = [sys.executable, "-m", "talon_rt.runtime.cli", "bench", "--engine", str(gguf_engine), "--dataset", str(prompts),
           "--policies", "ar", "--max-new-tokens", "4", "--out", str(tmp_path / "out"), "--no-progress"]
    r = subprocess.run(cmd + (["--raw"] if raw else []), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["chat_template"] is (not raw)
    n = results["prompt_runs"][0]["prompt_tokens"]
    assert n > 8 if not raw else n < 8   # the template adds role markers and newlines around the prompt
