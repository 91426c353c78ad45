"""talon_rt.export.hf_folder: a GGUF (a tiny one the test writes) as an fp32 HF folder that transformers and
onnxruntime-genai's builder read: the same weights as transformers' own GGUF loader, no GGUF
quantization left in its config, the tokenizer and chat template beside it. Seconds."""
from __future__ import annotations

import json

import pytest
import torch

from talon_rt.export.errors import CheckpointError
from talon_rt.export.hf_folder import main, write_hf_folder
from talon_rt.export.tiny import make_tiny_pair, write_gguf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    pair = make_tiny_pair(tmp_path_factory.mktemp("pair"), seed=3, chat=True)
    return write_gguf(pair[0], tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf", "Q4_1")


def test_folder_holds_the_gguf_weights_as_transformers_reads_them(gguf_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = write_hf_folder(gguf_file, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    saved = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                  dtype=torch.float32).state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(str(out)).chat_template


def test_not_a_gguf_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="model.gguf: not a GGUF file"):
        write_hf_folder(bad, tmp_path / "out")
    assert main([str(bad), str(tmp_path / "out")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
