"""`--draft-weights int8|int4`: the draft graph's MatMuls become ORT MatMulNBits; decoding stays
lossless (the float target verifies every draft token); bad combinations are refused by name."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.helpers import edited_engine, export_tiny
from talon_rt.export.build import ExportOptions
from talon_rt.export.errors import ExportError
from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import EngineError

NEW = 48


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized_engine(request, tiny_pair, tmp_path_factory):
    return export_tiny(tiny_pair, tmp_path_factory, "gqa", f"tiny-draft-{request.param}", check=True,
                        draft_weights=request.param), request.param


def test_draft_graph_is_quantized_and_described(quantized_engine):
    engine, weights = quantized_engine
    ops = [n.op_type for n in onnx.load(str(engine / "draft.onnx")).graph.node]
    assert "MatMulNBits" in ops and "MatMul" not in ops
    assert "MatMulNBits" not in [n.op_type for n in onnx.load(str(engine / "target.onnx")).graph.node]
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["draft"]["weights"] == weights


@pytest.mark.parametrize("policy", ["chain", "talon", "talon-cost"])
def test_quantized_draft_decodes_exactly_as_ar(quantized_engine, policy):
    engine, _ = quantized_engine
    rng = np.random.default_rng(7)
    prompts = [[1] + rng.integers(3, 320, size=int(rng.integers(4, 40))).tolist() for _ in range(8)]
    with Generator.open(engine, policy="ar") as ar, Generator.open(engine, policy=policy) as spec:
        for p in prompts:
            assert spec.generate(p, NEW).tokens == ar.generate(p, NEW).tokens


def test_bad_draft_weight_options_are_named():
    with pytest.raises(ExportError, match="--draft-weights 'int3': expected one of float, int8, int4"):
        ExportOptions(draft_weights="int3").check()
    with pytest.raises(ExportError, match="--draft-weights int4 needs --dtype float32, got float16"):
        ExportOptions(draft_weights="int4", dtype="float16").check()
    with pytest.raises(ExportError, match="--draft-weights int8 needs --flavour ort or gqa"):
        ExportOptions(draft_weights="int8", flavour="standard").check()


def _with_draft_weights(engine, tmp_path, weights: str):
    return edited_engine(engine, tmp_path / "edited", lambda m: m["draft"].update(weights=weights))


def test_manifest_rejects_unknown_draft_weights(quantized_engine, tmp_path):
    bad = _with_draft_weights(quantized_engine[0], tmp_path, "int3")
    with pytest.raises(EngineError, match=r"draft\.weights.*'int3' is not one of float, int8, int4"):
        Generator.open(bad)


def test_tensorrt_refuses_quantized_draft_weights(tiny_engine, tmp_path):
    from talon_rt.export.trt import build_engine_plans
    engine = _with_draft_weights(tiny_engine, tmp_path, "int4")
    with pytest.raises(ExportError, match="TensorRT plans need float draft weights"):
        build_engine_plans(engine, log=lambda *a: None)


def test_export_defaults_override_the_builtin_ones(tiny_pair, tmp_path_factory):
    engine = export_tiny(tiny_pair, tmp_path_factory, "gqa", "tiny-defaults",
                          defaults=(("budget", 8), ("mu", 0.3), ("root_k", 1)))
    with Generator.open(engine) as gen:
        o = gen.options
        assert (o.policy, o.budget, o.mu, o.root_k) == ("talon-gated", 8, 0.3, 1)


@pytest.mark.parametrize("defaults, message", [
    ((("beam", 4),), "--default beam=4: unknown key"),
    ((("budget", 0.5),), "--default budget=0.5: expected a int"),
    ((("budget", 99),), r"--default budget=99: outside \[1, --max-tree-tokens 64\]"),
])
def test_bad_export_defaults_are_named(defaults, message):
    with pytest.raises(ExportError, match=message):
        ExportOptions(defaults=defaults).check()
