"""GGUF files whose metadata lies or is out of range: every one is a named CheckpointError raised from
the metadata and the tensors' shapes alone, before a module is built or a weight is read (a block_count
of 10^6 used to allocate 5.5 GB, then die in std::bad_alloc), and `python -m talon_rt.export` says so in one line.
An export interrupted as it makes its temp dir leaves nothing."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from talon_rt.export.errors import CheckpointError
from talon_rt.export.gguf import GGUFModel
from talon_rt.export.tiny import make_tiny_pair, write_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), seed=4, chat=True)


@pytest.mark.parametrize("meta, match", [
    ({"llama.block_count": 10**6}, r"llama.block_count = 1000000, but block 8 has no tensors \(8 blocks"),
    ({"llama.block_count": 1}, r"tensor 'blk\.[1-7]\.\w+\.weight' is beyond metadata llama.block_count = 1"),
    ({"llama.feed_forward_length": 10**7}, r"tensor 'blk\.\d\.ffn_\w+\.weight' has shape \[\d+, \d+\], the "
                                           r"metadata implies \[(10000000, \d+|\d+, 10000000)\]"),
    ({"llama.embedding_length": 10**7}, r"has shape .*, the metadata implies .*10000000"),
    ({"llama.vocab_size": 10**9}, r"tensor '(token_embd|output)\.weight' has shape \[320, 64\], the metadata "
                                      r"implies \[1000000000, 64\]"),
    ({"llama.attention.head_count": 0}, r"metadata 'llama.attention.head_count' = 0 must be >= 1"),
    ({"llama.attention.head_count_kv": 0}, r"'llama.attention.head_count_kv' = 0 must be >= 1"),
    ({"llama.block_count": "32"}, r"metadata 'llama.block_count' = '32' is not an integer"),
    ({"llama.block_count": None}, r"metadata 'llama.block_count' is missing"),
    ({"llama.attention.layer_norm_rms_epsilon": math.nan}, r"layer_norm_rms_epsilon' = nan must be a finite number > 0"),
    ({"llama.attention.layer_norm_rms_epsilon": 0.0}, r"layer_norm_rms_epsilon' = 0.0 must be a finite"),
    ({"llama.rope.freq_base": -1.0}, r"metadata 'llama.rope.freq_base' = -1.0 must be a finite number > 0"),
    ({"llama.rope.freq_base": math.inf}, r"'llama.rope.freq_base' = inf must be"),
    ({"tokenizer.ggml.bos_token_id": -3}, r"'tokenizer.ggml.bos_token_id' = -3 must be >= 0"),
])
def test_bad_metadata_is_named_before_anything_is_built(pair, tmp_path, meta, match):
    path = write_gguf(pair[0], tmp_path / "bad.gguf", "F32", meta=meta)
    with pytest.raises(CheckpointError, match=match):
        GGUFModel.open(path).config


def test_export_cli_reports_bad_metadata_in_one_line(pair, tmp_path):
    path = write_gguf(pair[0], tmp_path / "huge.gguf", "Q8_0", meta={"llama.block_count": 10**6})
    r = subprocess.run([sys.executable, "-m", "talon_rt.export", "--model", str(path), "--draft", str(pair[1]),
                        "--out", str(tmp_path / "eng")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "block_count = 1000000, but block 8 has no tensors" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "eng").exists()


def test_hf_config_numbers_are_checked(pair):
    from talon_rt.export.config import TargetConfig
    from talon_rt.export.checkpoints import read_config
    cfg = read_config(pair[0])
    for key, value, match in (("rms_norm_eps", float("nan"), "rms_norm_eps = nan must be a finite number > 0"),
                              ("rope_theta", -1.0, "rope_theta = -1.0 must be"),
                              ("num_hidden_layers", "2", r"field 'num_hidden_layers' = '2' must be an integer >= 1"),
                              ("num_attention_heads", 0, "field 'num_attention_heads' = 0 must be")):
        bad = {**cfg, key: value, "rope_parameters": None} if key == "rope_theta" else {**cfg, key: value}
        with pytest.raises(CheckpointError, match=match):
            TargetConfig.from_hf(bad)


def test_a_signal_right_after_the_temp_dir_is_made_leaves_nothing(pair, tmp_path, monkeypatch):
    import signal
    import tempfile

    from talon_rt.export.build import ExportOptions, export_engine
    real = tempfile.mkdtemp

    def mkdtemp_then_signal(*args, **kwargs):
        made = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)          # lands before the caller holds the name
        return made
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signal)
    with pytest.raises(KeyboardInterrupt):
        export_engine(pair[0], pair[1], tmp_path / "eng", ExportOptions(max_seq_len=64, max_tree_tokens=8,
                                                                        max_prefill_chunk=16, k_max=8))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".eng")] == []
