"""draft.onnx reads the target's embedding where target.onnx stores it (ONNX external data into
target.onnx: no copy), as the target stores it (a GGUF's own Q8_0 / Q4_1 blocks): the draft sees the
same rows as a copy would hold, drafts are unchanged, and decoding stays lossless. An engine whose
draft.onnx holds its own copy (written before) still runs."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import export_tiny
from talon_rt.export import checkpoints, onnx_graphs
from talon_rt.export.build import ExportOptions, export_engine
from talon_rt.export.config import HeadConfig
from talon_rt.export.engine_dir import file_record
from talon_rt.export.gguf import GGUFModel
from talon_rt.export.parity import GraphRunner, causal, ort_session
from talon_rt.export.quantize import BLOCK, BlockWeight, dequantize
from talon_rt.export.tiny import make_tiny_pair, write_gguf
from talon_rt.runtime.api import Generator

NEW = 40
EMBED = onnx_graphs.EMBED


def _initializers(path, external: bool) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path), load_external_data=external).graph.initializer}


def _rows(inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The embedding [V, H] a graph's `EMBED.*` initializers hold (dequantised blocks)."""
    if EMBED + ".weight" in inits:
        return numpy_helper.to_array(inits[EMBED + ".weight"])
    arr = {k[len(EMBED) + 1:]: numpy_helper.to_array(t) for k, t in inits.items() if k.startswith(EMBED + ".")}
    mins = arr.get("mins_t")
    return dequantize(BlockWeight(arr["qweight"], arr["scales"], arr.get("zero_points"),
                                  arr["qweight"].shape[-1] * 8 // BLOCK, None if mins is None else mins.T))


def _load_pair(model, draft_dir):
    """(target, head) as the exporter loads them: the head reads the target's embedding."""
    cfg = HeadConfig.from_hf(checkpoints.read_config(draft_dir), str(draft_dir / "config.json"))
    target = checkpoints.load_target(checkpoints.open_source(model), feature_layers=cfg.feature_layers)
    return target, checkpoints.load_head(draft_dir, target)


def _draft_outputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """One 10-row first call of the draft graph `model` (a path or a ModelProto) on fixed inputs."""
    run = GraphRunner.draft(ort_session(model))
    rng = np.random.default_rng(seed)
    h = run.sess.get_inputs()[1].shape[-1]
    ids = rng.integers(0, 320, (1, 10))
    hidden = rng.standard_normal((1, 10, h)).astype(np.float32)
    return run.run({"input_ids": ids, "hidden": hidden}, np.arange(10), causal(10))


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("gguf_pair"), seed=5, chat=True)


@pytest.fixture(scope="module", params=["Q8_0", "Q4_1"])
def gguf_engine(request, gguf_pair, tmp_path_factory):
    """A GGUF target of one ggml type, int4 target weights (the file's blocks kept), int8 draft weights."""
    d = tmp_path_factory.mktemp(f"gguf-{request.param}")
    path = write_gguf(gguf_pair[0], d / f"tiny.{request.param}.gguf", request.param)
    opts = ExportOptions(max_seq_len=128, max_tree_tokens=16, max_prefill_chunk=64, k_max=8,
                         target_weights="int4", draft_weights="int8")
    return export_engine(path, gguf_pair[1], d / "eng", opts, check=True), path


def test_draft_refers_to_the_targets_embedding_bytes(tiny_engine_ort):
    draft = _initializers(tiny_engine_ort / "draft.onnx", external=False)
    target = tiny_engine_ort / "target.onnx"
    refs = {k: t for k, t in draft.items() if k.startswith(EMBED)}
    assert list(refs) == [EMBED + ".weight"] and "embed_tokens.weight" not in draft
    entries = {e.key: e.value for e in refs[EMBED + ".weight"].external_data}
    assert entries["location"] == "target.onnx"
    offset, length = int(entries["offset"]), int(entries["length"])
    table = numpy_helper.to_array(_initializers(target, external=False)[EMBED + ".weight"])
    assert length == table.nbytes and target.read_bytes()[offset:offset + length] == table.tobytes()
    assert refs[EMBED + ".weight"].data_location == onnx.TensorProto.EXTERNAL   # no copy inside
    assert not refs[EMBED + ".weight"].raw_data
    np.testing.assert_array_equal(_rows(_initializers(tiny_engine_ort / "draft.onnx", external=True)), table)


def test_quantised_target_embedding_is_read_as_its_blocks(gguf_engine):
    engine, path = gguf_engine
    draft = _initializers(engine / "draft.onnx", external=True)
    assert "embed_tokens.weight" not in draft and EMBED + ".qweight" in draft
    assert "GatherBlockQuantized" in [n.op_type for n in onnx.load(str(engine / "draft.onnx")).graph.node]
    tensors, _ = GGUFModel.open(path).tensors()   # the file's dequantised values
    gguf_rows = tensors[EMBED + ".weight"].numpy()
    np.testing.assert_array_equal(_rows(draft), gguf_rows)
    np.testing.assert_array_equal(_rows(_initializers(engine / "target.onnx", external=True)), gguf_rows)


def test_draft_outputs_equal_a_copy_of_the_embedding(gguf_engine, gguf_pair):
    """The GatherBlockQuantized rows are bit for bit the float copy's: every output of a draft call
    equals that of the same draft holding the dequantised table (what engines carried before)."""
    engine, path = gguf_engine
    target, head = _load_pair(path, gguf_pair[1])
    m = json.loads((engine / "manifest.json").read_text())
    from talon_rt.export.quantize import WeightQuantizer
    copy = onnx_graphs.build_draft(head, "float32", m["limits"]["max_seq_len"], m["draft"]["k_max"], "gqa",
                                   WeightQuantizer("int8"))
    assert "embed_tokens.weight" in {t.name for t in copy.graph.initializer}
    got, want = _draft_outputs(engine / "draft.onnx"), _draft_outputs(copy)
    for name in ("topk_ids", "topk_logp", "hidden_out"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("policy", ["talon", "eagle3"])
def test_int8_draft_over_a_quantised_target_is_lossless(gguf_engine, policy):
    engine, _ = gguf_engine
    rng = np.random.default_rng(3)
    prompts = [[1] + rng.integers(3, 320, size=int(rng.integers(4, 30))).tolist() for _ in range(6)]
    with Generator.open(engine, policy="ar") as ar, Generator.open(engine, policy=policy, budget=12) as spec:
        for p in prompts:
            assert spec.generate(p, NEW).tokens == ar.generate(p, NEW).tokens


def test_an_engine_whose_draft_holds_its_own_copy_still_runs(tiny_pair, tmp_path_factory):
    """Engines written before carry the embedding inside draft.onnx: same graph I/O, same results."""
    engine = export_tiny(tiny_pair, tmp_path_factory, "ort", "tiny-copy")
    m = json.loads((engine / "manifest.json").read_text())
    with Generator.open(engine, policy="talon") as gen:
        before = gen.generate([1, 5, 9, 17, 33], NEW).tokens
    _, head = _load_pair(tiny_pair[0], tiny_pair[1])
    onnx_graphs.save(onnx_graphs.build_draft(head, "float32", m["limits"]["max_seq_len"], m["draft"]["k_max"], "gqa"),
                     engine / "draft.onnx")
    assert "embed_tokens.weight" in _initializers(engine / "draft.onnx", external=False)
    m["files"]["draft.onnx"] = file_record(engine / "draft.onnx")
    (engine / "manifest.json").write_text(json.dumps(m))
    with Generator.open(engine, policy="talon") as gen:
        assert gen.generate([1, 5, 9, 17, 33], NEW).tokens == before


def test_target_embedding_names_a_graph_without_one(tmp_path):
    g = onnx.helper.make_graph([], "g", [], [], [numpy_helper.from_array(np.zeros(2, np.float32), "w")])
    onnx.save_model(onnx.helper.make_model(g), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match=r"other\.onnx: no model\.embed_tokens\.weight or "
                                         r"model\.embed_tokens\.qweight initializer"):
        onnx_graphs.target_embedding(tmp_path / "other.onnx")


@pytest.mark.parametrize("options, weights", [({}, "int8"), ({"flavour": "gqa"}, "int8"),
                                              ({"flavour": "standard"}, "float"), ({"dtype": "float16"}, "float"),
                                              ({"draft_weights": "float"}, "float"),
                                              ({"draft_weights": "int4"}, "int4")])
def test_draft_weights_default_to_int8_where_they_apply(options, weights):
    from talon_rt.export.build import default_draft_weights
    assert default_draft_weights(ExportOptions(**options)) == weights


def test_default_export_quantises_both_draft_graphs(tiny_engine_ort, tiny_engine):
    for graph in ("draft.onnx", "draft_fc.onnx"):
        ops = [n.op_type for n in onnx.load(str(tiny_engine_ort / graph)).graph.node]
        assert "MatMulNBits" in ops and "MatMul" not in ops and "Gemm" not in ops, graph
    assert json.loads((tiny_engine_ort / "manifest.json").read_text())["draft"]["weights"] == "int8"
    assert json.loads((tiny_engine / "manifest.json").read_text())["draft"]["weights"] == "float"   # TensorRT's
