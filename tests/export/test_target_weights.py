"""`--target-weights int8|int4`: every target linear layer, the LM head and the embedding become ORT
MatMulNBits / GatherBlockQuantized blocks; the quantised engine (flavour ort, int8 compute) decodes
exactly as its own `ar`; a GGUF's own Q4_0/Q4_1/Q8_0 blocks are stored exactly (Q4_1 with its block
minimums), and the manifest and export log say how each weight was stored; bad combinations are
refused by name."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import edited_engine, export_tiny
from talon_rt.export.build import ExportOptions, export_engine
from talon_rt.export.errors import ExportError
from talon_rt.export.gguf import GGUFModel
from talon_rt.export.gguf_blocks import from_ggml
from talon_rt.export.blocks import BLOCK, BlockWeight, dequantize, pack
from talon_rt.export.tiny import make_tiny_pair, write_gguf
from talon_rt.runtime.api import Generator

NEW = 48


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized_target(request, tiny_pair, tmp_path_factory):
    return export_tiny(tiny_pair, tmp_path_factory, "ort", f"tiny-target-{request.param}", check=True,
                        target_weights=request.param, draft_weights="float"), request.param


def _graph(engine, role="target"):
    return onnx.load(str(engine / f"{role}.onnx"))


def test_target_graph_is_quantized_and_described(quantized_target):
    engine, weights = quantized_target
    g = _graph(engine).graph
    ops = [n.op_type for n in g.node]
    # 8 layers x (qkv, o, gate|up, down) + the LM head; the embedding: one GatherBlockQuantized
    assert ops.count("MatMulNBits") == 8 * 4 + 1 and ops.count("GatherBlockQuantized") == 1
    matrices = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2
                and "rope" not in i.name and not i.name.endswith(".mins_t")}
    assert not [n.name for n in g.node if n.op_type in ("MatMul", "Gather") and set(n.input) & matrices]
    assert all(i.data_type != onnx.TensorProto.FLOAT or len(i.dims) < 2 or i.name.endswith(".scales")
               or "rope" in i.name for i in g.initializer)   # no float matrix left but scales and rotary tables
    assert {n.attribute[0].i for n in g.node if n.op_type == "MatMulNBits" and n.attribute[0].name == "bits"} \
        <= {8 if weights == "int8" else 4}
    logits = next(o for o in g.output if o.name == "logits")
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["model"]["weights"] == weights and manifest["draft"]["weights"] == "float"
    assert manifest["model"]["compute"] == "int8"
    record = manifest["model"]["quantization"]
    tensors = record.pop("tensors")
    assert record == {"block_size": BLOCK, "compute": "int8", "kept": {}, "requantised": {"float": 8 * 7 + 2}}
    assert len(tensors) == 8 * 7 + 2 and all(t.startswith("float -> ") and "max rel. error" in t
                                             for t in tensors.values())
    assert {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "accuracy_level"} == {4}
    assert "MatMulNBits" not in [n.op_type for n in _graph(engine, "draft").graph.node]


def _logits(gen: Generator, chunks: list[list[int]]) -> np.ndarray:
    """The engine's logits after the last token of `chunks`, run as causal calls of those sizes
    from an empty cache."""
    backend, past = gen._decoder.backend, 0
    for chunk in chunks:
        q = len(chunk)
        out = backend.target(np.asarray(chunk, np.int64), past + np.arange(q, dtype=np.int64),
                             np.tril(np.ones((q, q), bool)), past)
        past += q
    return out[-1].copy()


def check_lossless(prompt_label: str, got: list[int], want: list[int]) -> None:
    """Speculative output must equal `ar`'s token for token; the message names the first difference."""
    if got != want:
        j = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"{prompt_label}: output leaves ar at token {j} ({got[j:j + 4]} vs {want[j:j + 4]})")


@pytest.mark.parametrize("policy", ["chain", "eagle3", "talon"])
def test_quantized_target_decodes_as_its_own_ar(quantized_target, policy):
    """int8 activations (MatMulNBits accuracy_level 4) jump when an input moves by an ulp, so this holds
    only because every row of the ort graph is computed as `ar` computes it (tests/runtime/test_row_invariance.py)."""
    engine, _ = quantized_target
    rng = np.random.default_rng(11)
    prompts = [[1] + rng.integers(3, 320, size=int(rng.integers(4, 40))).tolist() for _ in range(12)]
    with Generator.open(engine, policy="ar") as ar, Generator.open(engine, policy=policy) as spec:
        for i, p in enumerate(prompts):
            check_lossless(f"{policy} prompt {i}", spec.generate(p, NEW).tokens, ar.generate(p, NEW).tokens)


@pytest.fixture(scope="module")
def float_compute_target(tiny_pair, tmp_path_factory):
    return export_tiny(tiny_pair, tmp_path_factory, "gqa", "tiny-target-int4-float", check=True,
                        target_weights="int4", target_compute="float")


def test_float_compute_is_recorded_and_shown(float_compute_target, capsys):
    from talon_rt.runtime.cli import main as cli
    g = _graph(float_compute_target).graph
    assert {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "accuracy_level"} == {1}
    manifest = json.loads((float_compute_target / "manifest.json").read_text())
    assert manifest["model"]["compute"] == "float" and manifest["model"]["quantization"]["compute"] == "float"
    assert cli(["inspect", str(float_compute_target)]) == 0
    assert "target weights int4 (float compute)" in capsys.readouterr().out


@pytest.mark.parametrize("policy", ["chain", "eagle3", "talon"])
def test_float_compute_target_equals_ar_exactly(float_compute_target, policy):
    """float32 activations: no int8 rounding step for the one-row / many-row kernel difference to
    cross, so speculative output equals `ar`'s token for token (the prompts of the int8 test above)."""
    rng = np.random.default_rng(11)
    prompts = [[1] + rng.integers(3, 320, size=int(rng.integers(4, 40))).tolist() for _ in range(12)]
    with Generator.open(float_compute_target, policy="ar") as ar, \
            Generator.open(float_compute_target, policy=policy) as spec:
        for i, p in enumerate(prompts):
            assert spec.generate(p, NEW).tokens == ar.generate(p, NEW).tokens, f"{policy} prompt {i}"


def test_bad_target_compute_is_named(tmp_path):
    with pytest.raises(ExportError, match="--target-compute 'int4': expected one of int8, float"):
        ExportOptions(target_weights="int4", target_compute="int4").check()


def test_quantized_target_and_draft_together(tiny_pair, tmp_path_factory):
    engine = export_tiny(tiny_pair, tmp_path_factory, "ort", "tiny-target-both-int4", target_weights="int4",
                          draft_weights="int4")
    rng = np.random.default_rng(5)
    prompt = [1] + rng.integers(3, 320, size=20).tolist()
    with Generator.open(engine, policy="ar") as ar, Generator.open(engine, policy="talon") as spec:
        check_lossless("talon", spec.generate(prompt, NEW).tokens, ar.generate(prompt, NEW).tokens)


def test_bad_target_weight_options_are_named():
    with pytest.raises(ExportError, match="--target-weights 'int3': expected one of float, int8, int4"):
        ExportOptions(target_weights="int3").check()
    with pytest.raises(ExportError, match="--target-weights int4 needs --dtype float32, got float16"):
        ExportOptions(target_weights="int4", dtype="float16").check()
    with pytest.raises(ExportError, match="--target-weights int8 needs --flavour ort or gqa .*TensorRT plans need "
                                          "float target weights"):
        ExportOptions(target_weights="int8", flavour="standard").check()


def test_tensorrt_refuses_quantized_target_weights(tiny_engine, tmp_path):
    from talon_rt.export.trt import build_engine_plans
    out = edited_engine(tiny_engine, tmp_path / "edited", lambda m: m["model"].update(weights="int4"))
    with pytest.raises(ExportError, match="target weights are int4 .*TensorRT plans need float target weights"):
        build_engine_plans(out, log=lambda *a: None)


# -- llama.cpp blocks -------------------------------------------------------------------------------


def _ggml(qtype: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import gguf
    kind = gguf.GGMLQuantizationType[qtype]
    rows = gguf.quants.quantize(w, kind)
    return rows, gguf.quants.dequantize(rows, kind).astype(np.float32)


@pytest.mark.parametrize("qtype, bits, stored_bits", [
    ("Q4_0", 4, 4), ("Q4_0", 8, 8), ("Q8_0", 8, 8), ("Q8_0", 4, 8), ("Q4_1", 4, 4), ("Q4_1", 8, 8)])
def test_ggml_blocks_are_kept_exactly(qtype, bits, stored_bits):
    """Q4_0 and Q8_0 as symmetric blocks (Q8_0 at 8 bits: it does not fit 4), Q4_1 as q with zero point 0
    plus its block minimums: every value equals what llama.cpp dequantizes."""
    w = np.random.default_rng(0).standard_normal((48, 256)).astype(np.float32)
    rows, ref = _ggml(qtype, w)
    got = from_ggml(qtype, rows, w.shape, bits)
    assert got.bits == stored_bits
    assert (got.mins is not None) == (qtype == "Q4_1")
    assert (got.zero_points is None) == (qtype != "Q4_1")   # symmetric: the kernels' default zero point
    np.testing.assert_array_equal(dequantize(got), ref)


def test_other_ggml_types_are_left_to_requantisation():
    assert from_ggml("Q6_K", np.zeros((4, 210), np.uint8), (4, 256), 8) is None


def test_q4_1_blocks_keep_their_minimums_whatever_they_are():
    """w = d*x + m for any fp16 d, m (here -m/d is never an integer): stored as x, d and m, exactly."""
    rng = np.random.default_rng(1)
    n, blocks = 6, 4
    d = rng.uniform(0.001, 0.1, (n, blocks)).astype(np.float16)
    m = (-rng.uniform(0.0, 1.0, (n, blocks)) - 0.0123).astype(np.float16)
    x = rng.integers(0, 16, (n, blocks, BLOCK)).astype(np.uint8)
    raw = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8),
                          x[..., :16] | (x[..., 16:] << 4)], -1).reshape(n, -1)
    import gguf
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)
    got = from_ggml("Q4_1", raw, (n, blocks * BLOCK), 4)
    np.testing.assert_array_equal(got.mins, m.astype(np.float32))
    np.testing.assert_array_equal(dequantize(got), ref)


def test_ggml_rows_of_the_wrong_shape_are_named():
    rows, _ = _ggml("Q4_0", np.ones((4, 64), np.float32))
    with pytest.raises(ExportError, match=r"Q4_0 blocks: expected uint8 rows \[4, 36\] for a \[4, 64\] weight, "
                                          r"got uint8 \[4, 18\]"):
        from_ggml("Q4_0", rows[:, :18], (4, 64), 4)


def _initializer_weight(graph: onnx.GraphProto, prefix: str) -> np.ndarray:
    """The weight a quantised graph computes with: its blocks (bits from qweight's shape) + minimums."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    data = inits[prefix + ".qweight"]
    mins = inits.get(prefix + ".mins_t")
    return dequantize(BlockWeight(data, inits[prefix + ".scales"], inits.get(prefix + ".zero_points"),
                                  data.shape[-1] * 8 // BLOCK, None if mins is None else mins.T))


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("gguf_pair"), seed=4, chat=True)


@pytest.mark.parametrize("qtype, weights, kept", [("Q4_0", "int4", True), ("Q8_0", "int8", True),
                                                  ("Q8_0", "int4", True), ("Q4_1", "int4", True)])
def test_gguf_blocks_go_into_the_graph_unchanged(gguf_pair, tmp_path, qtype, weights, kept):
    path = write_gguf(gguf_pair[0], tmp_path / f"tiny.{qtype}.gguf", qtype)
    logs: list[str] = []
    opts = ExportOptions(max_seq_len=128, max_tree_tokens=16, max_prefill_chunk=64, k_max=8, target_weights=weights)
    engine = export_engine(path, gguf_pair[1], tmp_path / "eng", opts, log=logs.append)
    n = 8 * 7 + 2   # 7 matrices per layer, the embedding and the LM head
    record = json.loads((engine / "manifest.json").read_text())["model"]["quantization"]
    tensors = record.pop("tensors")
    assert record == {"block_size": BLOCK, "compute": "int8", "kept": {qtype: n} if kept else {},
                      "requantised": {} if kept else {qtype: n}}
    assert len(tensors) == n and all(t.startswith(f"{qtype} -> ") for t in tensors.values())
    assert any(f"{n} weights {qtype} -> " in line and "(exact)" in line for line in logs)
    assert any(f"{n} from the file's {qtype} blocks" if kept else f"{n} re-quantised from {qtype}" in line
               for line in logs)
    if not kept:
        return
    tensors, _ = GGUFModel.open(path).tensors()   # the dequantized values, HF names and row order
    graph = _graph(engine).graph
    qkv = np.concatenate([tensors[f"model.layers.3.self_attn.{p}_proj.weight"].numpy() for p in "qkv"])
    np.testing.assert_array_equal(_initializer_weight(graph, "model.layers.3.self_attn.qkv_proj"), qkv)
    for prefix, name in (("model.layers.5.mlp.down_proj", "model.layers.5.mlp.down_proj.weight"),
                         ("model.embed_tokens", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")):
        np.testing.assert_array_equal(_initializer_weight(graph, prefix), tensors[name].numpy())


def test_pack_puts_the_first_value_in_the_low_nibble():
    assert pack(np.array([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]
    assert pack(np.array([[1, 2, 3]]), 8).tolist() == [[1, 2, 3]]


def test_make_export_and_cli_take_target_weights(tiny_pair, tmp_path):
    """`make export TARGET_WEIGHTS=int4` (the README's variable) and `python -m talon_rt.export --target-weights`."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    model_dir, draft_dir = tiny_pair
    if (root / ".venv" / "bin" / "python").exists():
        r = subprocess.run(["make", "-s", "-o", ".venv/.installed", "export", f"MODEL={model_dir}",
                            f"DRAFT={draft_dir}", "NAME=made4", f"ENGINES={tmp_path}", "TARGET_WEIGHTS=int4"],
                           cwd=root, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "made4" / "manifest.json").read_text())["model"]["weights"] == "int4"
    r = subprocess.run([sys.executable, "-m", "talon_rt.export", "--model", str(model_dir), "--draft", str(draft_dir),
                        "--out", str(tmp_path / "bad"), "--target-weights", "int4", "--flavour", "standard"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--target-weights int4 needs --flavour ort or gqa" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("weights, compute, message", [
    ("int4", "int2", r"model\.compute.*'int2' is not one of int8, float \(model\.weights int4\)"),
    ("float", "int8", r"model\.compute.*'int8' is not one of float \(model\.weights float\)"),
])
def test_manifest_rejects_a_bad_compute(float_compute_target, tmp_path, weights, compute, message):
    from talon_rt.runtime.errors import EngineError
    out = edited_engine(float_compute_target, tmp_path / "edited",
                        lambda m: m["model"].update(weights=weights, compute=compute))
    with pytest.raises(EngineError, match=message):
        Generator.open(out)
