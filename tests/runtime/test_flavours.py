"""Graph flavours: the gqa engine agrees with the standard one, the manifest's flavour must match the
graphs, and TensorRT (which needs standard ops) refuses gqa graphs with a clear message."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import EngineError, OptionError
from talon_rt.runtime.manifest import open_manifest


def test_gqa_graphs_use_group_query_attention(tiny_engine_gqa):
    m = json.loads((tiny_engine_gqa / "manifest.json").read_text())
    assert {r: g["flavour"] for r, g in m["graphs"].items()} == {"target": "gqa", "draft_fc": "standard",
                                                                 "draft": "gqa"}
    for role, layers in (("target", 8), ("draft", 1)):
        model = onnx.load(str(tiny_engine_gqa / f"{role}.onnx"))
        ops = [n.op_type for n in model.graph.node if n.domain == "com.microsoft"]
        assert ops.count("GroupQueryAttention") == layers
        # the target fuses each residual Add with the next RMSNorm (2 per layer)
        assert ops.count("SkipSimplifiedLayerNormalization") == (2 * layers if role == "target" else 0)
        # one packed q|k|v projection per layer, MatMul on pre-transposed weights
        assert [n.op_type for n in model.graph.node].count("Gemm") == 0
        assert all(n.input[1] == n.input[2] == "" for n in model.graph.node if n.op_type == "GroupQueryAttention")
        # the op's present output is the graph output itself (an Identity would break the in-place write)
        gqa_outs = {o for n in model.graph.node if n.op_type == "GroupQueryAttention" for o in n.output}
        assert {o.name for o in model.graph.output if o.name.startswith("present_")} <= gqa_outs


def test_flavours_agree_on_greedy_ar_and_argmax(tiny_engine, tiny_engine_gqa):
    rng = np.random.default_rng(5)
    prompts = [[1] + rng.integers(3, 320, size=int(rng.integers(4, 40))).tolist() for _ in range(4)]
    outs = {}
    for name, eng in (("standard", tiny_engine), ("gqa", tiny_engine_gqa)):
        with Generator.open(eng, policy="ar") as gen:
            outs[name] = [gen.generate(p, max_new_tokens=32).tokens for p in prompts]
            b = gen._decoder.backend
            q = 13   # in-graph argmax == argmax of the logits, on a tree-shaped call after a prefix
            b.target(np.asarray(prompts[0], np.int64), np.arange(len(prompts[0])),
                     np.tril(np.ones((len(prompts[0]),) * 2, bool)), 0)
            ids, pos = rng.integers(3, 320, q), len(prompts[0]) + np.arange(q) // 2
            mask = np.tril(np.ones((q, q), bool))
            logits = b.target(ids, pos, mask, len(prompts[0])).copy()
            np.testing.assert_array_equal(b.target_argmax(ids, pos, mask, len(prompts[0])), logits.argmax(-1))
    assert outs["standard"] == outs["gqa"]


def test_manifest_flavour_must_match_the_graphs(tiny_engine, tiny_engine_gqa, tmp_path):
    for src, claim, want in ((tiny_engine, "gqa", "'q'"), (tiny_engine_gqa, "standard", "256")):
        eng = tmp_path / claim
        shutil.copytree(src, eng)
        raw = json.loads((eng / "manifest.json").read_text())
        raw["graphs"]["target"]["flavour"] = claim
        (eng / "manifest.json").write_text(json.dumps(raw))
        with pytest.raises(EngineError, match=rf"target\.onnx: output 'present_key_0' dim 2 is {want}.*"
                                              rf"graphs\.target\.flavour '{claim}'"):
            Generator.open(eng)
    raw["graphs"]["draft_fc"]["flavour"] = "gqa"
    (eng / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=r"graphs\.draft_fc\.flavour.*unsupported 'gqa' \(this runtime reads 'standard'\)"):
        open_manifest(eng)


def test_tensorrt_refuses_gqa(tiny_engine_gqa):
    from talon_rt.export.errors import ExportError
    from talon_rt.export.trt import build_engine_plans
    from talon_rt.runtime.backends.trt import TrtBackend
    with pytest.raises(OptionError, match=r"'tensorrt' needs flavour 'standard' graphs.*graphs\.target\.flavour"):
        TrtBackend(open_manifest(tiny_engine_gqa))
    with pytest.raises(ExportError, match=r"TensorRT needs flavour 'standard' \(export with --flavour standard\)"):
        build_engine_plans(tiny_engine_gqa)
