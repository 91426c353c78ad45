"""`python -m export.trt`: a one-line refusal without tensorrt/GPU; plans + manifest entries with them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.engine_dir import verify_engine_dir

ROOT = Path(__file__).resolve().parents[1]


def _trt_available() -> str | None:
    """None when tensorrt and a GPU are usable, else the reason."""
    from export.trt import TrtUnavailable, load_tensorrt
    try:
        load_tensorrt()
    except TrtUnavailable as e:
        return str(e)
    return None


def _run(*args):
    return subprocess.run([sys.executable, "-m", "export.trt", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_without_tensorrt_exits_with_one_line(tiny_engine):
    reason = _trt_available()
    if reason is None:
        pytest.skip("tensorrt and a GPU are available here; the refusal path does not apply")
    r = _run(tiny_engine)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("export.trt: ")
    assert "no plans built" in r.stderr or "GPU" in r.stderr
    assert not list(Path(tiny_engine).glob("*.plan"))


def test_missing_engine_dir_is_named(tmp_path):
    r = _run(tmp_path / "nope")
    assert r.returncode == 1 and "engine directory not found: " in r.stderr and "nope" in r.stderr


@pytest.mark.gpu
def test_build_plans_and_check(tiny_engine, tmp_path):
    reason = _trt_available()
    if reason is not None:
        pytest.skip(reason)
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    r = _run(eng, "--check")
    assert r.returncode == 0, r.stderr
    m = verify_engine_dir(eng)
    assert {"target.plan", "draft_fc.plan", "draft.plan"} <= set(m["files"])
    for role, entry in m["tensorrt"]["plans"].items():
        assert entry["max_abs_diff_vs_ort"] < 1e-3, role
        assert entry["shape_inputs"].get("past_len", {"max": [255]})["max"] == [255]
    from runtime.manifest import open_manifest
    assert open_manifest(eng).plan("target") is not None


@pytest.mark.parametrize("role", ["target", "draft_fc", "draft"])
def test_profiles_cover_every_dynamic_input(tiny_engine, role):
    """Runs without TensorRT: every input with a symbolic dim gets min/opt/max of its rank."""
    import onnx

    from export.trt import profile_shapes
    m = verify_engine_dir(tiny_engine)
    shapes, values = profile_shapes(m, role)
    graph = onnx.load(str(tiny_engine / m["graphs"][role]["file"]), load_external_data=False).graph
    for inp in graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
        if inp.name == "past_len":
            assert values["past_len"] == ([0], [128], [255])
        elif any(isinstance(d, str) for d in dims):
            lo, opt, hi = shapes[inp.name]
            assert len(lo) == len(opt) == len(hi) == len(dims)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            assert hi[1] == 128 and opt[1] == 16  # max(max_tree_tokens, max_prefill_chunk); budget
            fixed = [d for d in dims if not isinstance(d, str)]
            assert fixed == [d for d, s in zip(hi, dims) if not isinstance(s, str)]
        else:
            assert inp.name not in shapes
