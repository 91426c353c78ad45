"""Round trip of the export: engine dir validates, checksums match, damage is reported by name."""
from __future__ import annotations

import json

import pytest

from talon_rt.export.engine_dir import verify_engine_dir
from talon_rt.export.errors import EngineDirError

from tests.helpers import copy_engine


def test_tiny_engine_verifies(tiny_engine):
    m = verify_engine_dir(tiny_engine)
    assert m["name"] == "tiny"
    assert set(m["files"]) == {"target.onnx", "draft_fc.onnx", "draft.onnx", "tokenizer.json"}
    assert m["model"]["feature_layers"] == [2, 4, 5]
    assert m["tokenizer"] == {"file": "tokenizer.json", "bos_id": 1, "eos_ids": [2], "pad_id": 0,
                              "chat_template": None, "stop_ids": [2]}
    assert m["source"] == {"format": "hf", "name": "target", "quantization": None}


def test_runtime_manifest_accepts_it(tiny_engine):
    from talon_rt.runtime.manifest import open_manifest
    m = open_manifest(tiny_engine)
    assert m.draft.draft_vocab_size == 160 and m.limits.max_seq_len == 256


def test_corrupted_file_is_named(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    data = bytearray((eng / "draft.onnx").read_bytes())
    data[-10] ^= 0xFF
    (eng / "draft.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineDirError, match=r"draft\.onnx: checksum mismatch \(sha256 .* files\.draft\.onnx\.sha256"):
        verify_engine_dir(eng)


def test_missing_file_is_named(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "tokenizer.json").unlink()
    with pytest.raises(EngineDirError, match=r"tokenizer\.json: missing \(listed in manifest\.json files\)"):
        verify_engine_dir(eng)


def test_path_outside_dir_is_rejected(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    m = json.loads((eng / "manifest.json").read_text())
    m["graphs"]["draft"]["file"] = "../draft.onnx"
    (eng / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineDirError, match=r"graphs\.draft\.file"):
        verify_engine_dir(eng)


@pytest.mark.parametrize("role", ["target", "draft_fc", "draft"])
def test_graphs_are_standard_and_match_the_contract(tiny_engine, role):
    import onnx

    from talon_rt.export.parity import ort_session
    from talon_rt.runtime.backends.ort import session_io
    from talon_rt.runtime.manifest import check_graph_io, open_manifest
    m = open_manifest(tiny_engine)
    path = tiny_engine / m.graphs[role].file
    model = onnx.load(str(path))
    assert {op.domain for op in model.opset_import} == {""} and model.opset_import[0].version == 17
    assert {n.domain for n in model.graph.node} <= {""}  # "standard": no com.microsoft ops
    onnx.checker.check_model(model, full_check=True)  # includes strict shape inference
    check_graph_io(m, role, *session_io(ort_session(path)))
