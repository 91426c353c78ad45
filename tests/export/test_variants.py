"""Export variants: fp16 graphs (smoke: runs, sane agreement with fp32) and weights in external data."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from talon_rt.export import onnx_graphs
from talon_rt.export.build import ExportOptions, export_engine
from talon_rt.export.engine_dir import verify_engine_dir
from talon_rt.export.parity import GraphRunner, causal, ort_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fp16_engine(tiny_pair, tmp_path_factory):
    opts = ExportOptions(dtype="float16", max_seq_len=256, max_tree_tokens=64, k_max=32)
    # check=True: the fp16 graphs are run against the fp16-loaded reference before the dir is finished
    return export_engine(*tiny_pair, tmp_path_factory.mktemp("fp16") / "tiny16", opts, check=True)


def test_fp16_manifest_and_io_dtypes(fp16_engine):
    m = verify_engine_dir(fp16_engine)
    assert m["model"]["dtype"] == "float16"
    t = ort_session(fp16_engine / "target.onnx")
    types = {a.name: a.type for a in t.get_inputs() + t.get_outputs()}
    assert types["past_key_0"] == types["features"] == types["present_value_3"] == "tensor(float16)"
    assert types["logits"] == "tensor(float)"
    d = ort_session(fp16_engine / "draft.onnx")
    types = {a.name: a.type for a in d.get_inputs() + d.get_outputs()}
    assert types["hidden"] == types["hidden_out"] == types["past_key"] == "tensor(float16)"
    assert types["topk_logp"] == "tensor(float)" and types["topk_ids"] == "tensor(int64)"


def test_fp16_agrees_with_fp32(fp16_engine, tiny_engine):
    ids = np.random.default_rng(0).integers(3, 320, size=(1, 40))
    runs = {}
    for label, eng in (("fp32", tiny_engine), ("fp16", fp16_engine)):
        t = GraphRunner.target(ort_session(eng / "target.onnx"))
        out = t.run({"input_ids": ids}, np.arange(40), causal(40))
        step = t.run({"input_ids": ids[:, -1:]}, [40], causal(1))  # one decode step over the fp16 cache
        fc = ort_session(eng / "draft_fc.onnx")
        (hidden,) = fc.run(None, {"features": out["features"]})
        d = GraphRunner.draft(ort_session(eng / "draft.onnx"))
        dout = d.run({"input_ids": ids, "hidden": hidden}, np.arange(40), causal(40))
        runs[label] = (out["logits"], step["logits"], dout["topk_ids"], dout["topk_logp"])
    (l32, s32, i32, p32), (l16, s16, i16, p16) = runs["fp32"], runs["fp16"]
    assert np.isfinite(l16).all() and np.isfinite(p16).all()
    assert (l16.argmax(-1) == l32.argmax(-1)).mean() >= 0.9
    assert s16.argmax() == s32.argmax()
    assert np.abs(l16 - l32).max() < 0.1
    assert (i16[..., 0] == i32[..., 0]).mean() >= 0.9  # draft top-1 (target ids)


def test_external_data(tiny_pair, tmp_path, monkeypatch):
    """A graph above the size threshold keeps its weights in `<file>.data`, listed with a checksum."""
    monkeypatch.setattr(onnx_graphs, "EXTERNAL_DATA_BYTES", 50_000)   # the int8 draft's 75 kB, not draft_fc's 14 kB
    out = export_engine(*tiny_pair, tmp_path / "ext", ExportOptions(max_seq_len=64, max_tree_tokens=16, max_prefill_chunk=32, k_max=8))
    m = verify_engine_dir(out)
    assert {"target.onnx.data", "draft.onnx.data"} <= set(m["files"]) and "draft_fc.onnx.data" not in m["files"]
    assert (out / "target.onnx").stat().st_size < 100_000
    ref = GraphRunner.target(ort_session(out / "target.onnx"))
    ids = np.arange(3, 11)[None]
    got = ref.run({"input_ids": ids}, np.arange(8), causal(8))["logits"]
    assert np.isfinite(got).all() and got.shape == (1, 8, 320)
    # the draft reads the target's embedding inside target.onnx.data
    refs = {e.key: e.value for t in onnx.load(str(out / "draft.onnx"), load_external_data=False).graph.initializer
            if t.name == onnx_graphs.EMBED + ".weight" for e in t.external_data}
    assert refs["location"] == "target.onnx.data"
    hidden = np.zeros((1, 8, 64), np.float32)
    first = GraphRunner.draft(ort_session(out / "draft.onnx")).run({"input_ids": ids, "hidden": hidden},
                                                                    np.arange(8), causal(8))
    assert np.isfinite(first["topk_logp"]).all() and first["topk_ids"].shape == (1, 8, 8)
