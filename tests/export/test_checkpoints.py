"""Checkpoint loaders: every on-disk layout we accept, and a named error for everything we refuse."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from talon_rt.export import checkpoints
from talon_rt.export.errors import CheckpointError
from talon_rt.export.tiny import make_tiny_pair

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("ckpt"), arch="qwen2", seed=3, layers=4)


def _clone(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded(pair, tmp_path, fmt):
    ref = checkpoints.load_target(pair[0])
    d = _clone(pair[0], tmp_path, "sharded")
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    shards = {f"{stem}-00001-of-00002.{ext}": keys[::2], f"{stem}-00002-of-00002.{ext}": keys[1::2]}
    for fname, ks in shards.items():
        part = {k: state[k] for k in ks}
        save_file(part, str(d / fname)) if fmt == "safetensors" else torch.save(part, d / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    assert _same(checkpoints.load_target(d), ref)
    (d / f"{stem}-00002-of-00002.{ext}").unlink()
    with pytest.raises(CheckpointError, match=r"00002-of-00002\.(safetensors|bin): weight file not found"):
        checkpoints.load_target(d)


def test_pytorch_model_bin(pair, tmp_path):
    ref = checkpoints.load_target(pair[0])
    d = _clone(pair[0], tmp_path, "bin")
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    assert _same(checkpoints.load_target(d), ref)
    h = _clone(pair[1], tmp_path, "head_bin")
    torch.save(load_file(str(h / "model.safetensors")), h / "pytorch_model.bin")
    (h / "model.safetensors").unlink()
    head = checkpoints.load_head(h, ref)
    assert torch.equal(head.d2t, checkpoints.load_head(pair[1], ref).d2t)


def test_pickled_object_is_refused(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "evil")
    (d / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(1), "x": object()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read weights"):
        checkpoints.load_target(d)


def test_unknown_architecture(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "gpt2")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'gpt2' is not supported"):
        checkpoints.load_target(d)


def test_unsupported_rope_type(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "yarn")
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"rope type 'yarn' is not supported"):
        checkpoints.load_target(d)


def test_missing_tensor_is_named(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "missing")
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.k_proj\.bias' is missing"):
        checkpoints.load_target(d)


def test_misshapen_tensor_is_named(pair, tmp_path):
    d = _clone(pair[1], tmp_path, "head_shape")
    state = load_file(str(d / "model.safetensors"))
    state["fc.weight"] = state["fc.weight"][:, :-1].contiguous()
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'fc\.weight' has shape \[64, 191\]"):
        checkpoints.load_head(d, checkpoints.load_target(pair[0]))


def test_unexpected_tensor_is_named(pair, tmp_path):
    d = _clone(pair[1], tmp_path, "head_extra")
    state = load_file(str(d / "model.safetensors"))
    state["midlayer.self_attn.o_proj.bias"] = torch.zeros(64)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'midlayer\.self_attn\.o_proj\.bias'"):
        checkpoints.load_head(d, checkpoints.load_target(pair[0]))


def test_head_with_own_embedding(pair, tmp_path):
    target = checkpoints.load_target(pair[0])
    d = _clone(pair[1], tmp_path, "head_emb")
    state = load_file(str(d / "model.safetensors"))
    state["embed_tokens.weight"] = torch.randn(320, 64)
    save_file(state, str(d / "model.safetensors"))
    head = checkpoints.load_head(d, target)
    assert torch.equal(head.embed_tokens.weight, state["embed_tokens.weight"])


def test_head_without_d2t_needs_full_vocab(pair, tmp_path):
    d = _clone(pair[1], tmp_path, "head_nod2t")
    state = load_file(str(d / "model.safetensors"))
    del state["d2t"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'd2t' is missing"):
        checkpoints.load_head(d, checkpoints.load_target(pair[0]))


def test_no_weights_at_all(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "empty")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found"):
        checkpoints.load_target(d)


def test_head_config_names_other_taps(pair, tmp_path):
    """SpecForge's eagle_aux_hidden_state_layer_ids count layer outputs: output of j = hidden_states[j+1]."""
    from talon_rt.export.build import ExportOptions, export_engine
    d = _clone(pair[1], tmp_path, "head_taps")
    cfg = json.loads((d / "config.json").read_text())
    cfg["eagle_aux_hidden_state_layer_ids"] = [0, 1, 2]
    (d / "config.json").write_text(json.dumps(cfg))
    out = export_engine(pair[0], d, tmp_path / "eng", ExportOptions(max_seq_len=64, max_tree_tokens=16,
                                                                    max_prefill_chunk=16, k_max=4))
    assert json.loads((out / "manifest.json").read_text())["model"]["feature_layers"] == [1, 2, 3]


def test_sliding_window_layers_are_refused(pair, tmp_path):
    d = _clone(pair[0], tmp_path, "sliding")
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "sliding_attention", "full_attention", "full_attention"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"layer_types \['sliding_attention'\] are not supported"):
        checkpoints.load_target(d)
