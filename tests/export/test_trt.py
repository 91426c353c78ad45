"""`python -m talon_rt.export.trt`: a one-line refusal without tensorrt/GPU; plans + manifest entries with them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from talon_rt.export.engine_dir import verify_engine_dir

ROOT = Path(__file__).resolve().parents[2]


def _trt_available() -> str | None:
    """None when tensorrt and a GPU are usable, else the reason."""
    from talon_rt.export.trt import TrtUnavailable, load_tensorrt
    try:
        load_tensorrt()
    except TrtUnavailable as e:
        return str(e)
    return None


def _run(*args):
    return subprocess.run([sys.executable, "-m", "talon_rt.export.trt", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_without_tensorrt_exits_with_one_line(tiny_engine):
    reason = _trt_available()
    if reason is None:
        pytest.skip("tensorrt and a GPU are available here; the refusal path does not apply")
    r = _run(tiny_engine)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("talon_rt.export.trt: ")
    assert "no plans built" in r.stderr or "GPU" in r.stderr
    assert not list(Path(tiny_engine).glob("*.plan"))


def test_missing_engine_dir_is_named(tmp_path):
    r = _run(tmp_path / "nope")
    assert r.returncode == 1 and "engine directory not found: " in r.stderr and "nope" in r.stderr


@pytest.mark.gpu
def test_build_plans_and_check(tiny_engine, tmp_path, need):
    need.tensorrt()
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    r = _run(eng, "--check")
    assert r.returncode == 0, r.stderr
    m = verify_engine_dir(eng)
    assert {"target.plan", "draft_fc.plan", "draft.plan"} <= set(m["files"])
    assert set(m["tensorrt"]["plans"]) == {"target", "draft_fc", "draft"}
    for role, entry in m["tensorrt"]["plans"].items():
        assert entry["max_abs_diff_vs_ort"] < 1e-3, role
        assert entry["argmax_mismatches_vs_ort"] == 0, role
    from talon_rt.runtime.manifest import open_manifest
    assert open_manifest(eng).plan("target") is not None


@pytest.mark.parametrize("role", ["target", "draft_fc", "draft"])
def test_profiles_cover_every_dynamic_input(tiny_engine, role):
    """Runs without TensorRT: every input with a symbolic dim gets min/opt/max of its rank."""
    import onnx

    from talon_rt.export.trt import profile_shapes
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


def test_draft_profile_covers_every_policy_footprint(tiny_engine):
    """The draft's mask spans the round's scratch rows + q: eagle3's default 7 x 10 = 70 keys, wider
    than q_max = 32 here; every policy's round must fit the profile the plans are built with."""
    import copy

    from talon_rt.export.trt import profile_shapes
    from talon_rt.runtime.decode import policy_from_options
    from talon_rt.runtime.options import Options
    m = copy.deepcopy(verify_engine_dir(tiny_engine))
    m["limits"].update(max_tree_tokens=32, max_prefill_chunk=32)
    shapes, _ = profile_shapes(m, "draft")
    t_max = shapes["tree_mask"][2][2]
    assert shapes["tree_mask"][2][1] == 32
    for policy in ("chain", "eagle3", "talon"):
        assert policy_from_options(Options(policy=policy, budget=32)).footprint()[1] <= t_max, policy
    assert t_max == 70


def test_check_plan_allows_near_tie_argmax_flips(tiny_engine, monkeypatch):
    """Ids are compared as ids: a flip between two logits within the float error passes, a pick far
    below the maximum is a mismatch (a float |diff| of ids would fail the first and blur the second)."""
    import numpy as np
    import polygraphy.backend.trt as poly_trt

    import talon_rt.export.parity
    from talon_rt.export.trt import check_plan
    logits = np.zeros((1, 3, 8), np.float32)
    logits[0, :, 5] = 2.0
    logits[0, 1, 3] = 2.0 - 1e-5   # row 1: a near tie between ids 5 and 3
    ref = {"logits": logits, "argmax": np.full((1, 3), 5, np.int64)}

    class Output:
        def __init__(self, name):
            self.name = name

    class Session:
        def get_inputs(self):
            return []

        def get_outputs(self):
            return [Output(n) for n in ref]

        def run(self, names, feed):
            return list(ref.values())

    plan_out: dict = {}

    class Runner:
        def __init__(self, engine):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def infer(self, feed):
            return plan_out

    monkeypatch.setattr(talon_rt.export.parity, "ort_session", lambda path: Session())
    monkeypatch.setattr(poly_trt, "TrtRunner", Runner)
    monkeypatch.setattr(poly_trt, "EngineFromBytes", lambda plan: plan)
    m = verify_engine_dir(tiny_engine)
    flipped = logits.copy()
    flipped[0, 1, 3] += 2e-5
    plan_out.update(logits=flipped, argmax=np.array([[5, 3, 5]]))
    near_tie = check_plan(b"", tiny_engine / "target.onnx", m, "target")
    assert near_tie.max_abs_diff < 1e-3 and near_tie.argmax_mismatches == 0
    plan_out.update(logits=logits, argmax=np.array([[5, 5, 0]]))
    assert check_plan(b"", tiny_engine / "target.onnx", m, "target").argmax_mismatches == 1


def test_tensorrt_backend_checks_call_bounds():
    """q <= q_max and past_len + q <= S before anything reaches the plans (ORT checks the same)."""
    import numpy as np

    from talon_rt.runtime.backends.trt import TrtBackend
    b = TrtBackend.__new__(TrtBackend)   # no GPU here: only the bounds logic, plans absent
    b.q_max, b.S, b.target_q, b.draft_q, b.draft_t, b.fc_q, b.plans = 8, 16, 8, 8, 12, 8, {}
    ids = np.zeros(9, np.int64)
    with pytest.raises(ValueError, match=r"q=9 at past_len=0 exceeds the buffers \(q_max=8, S=16\)"):
        b.target_argmax(ids, ids, np.ones((9, 9), bool), 0)
    with pytest.raises(ValueError, match=r"q=4 at past_len=13"):
        b.draft(ids[:4], np.zeros((4, 2)), ids[:4], np.ones((4, 4), bool), 13)
    with pytest.raises(ValueError, match=r"mask 13 keys wide exceeds draft.plan's profile \(T <= 12\)"):
        b.draft(ids[:1], np.zeros((1, 2)), ids[:1], np.ones((1, 13), bool), 0)
    with pytest.raises(ValueError, match=r"q=9"):
        b.draft_fc(np.arange(9))


def test_open_checks_the_round_against_the_backend(tiny_engine, monkeypatch):
    """Generator.open hands the policy's footprint to the backend (TensorRT checks its profiles)."""
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.backends.base import Backend
    from talon_rt.runtime.backends.trt import check_profile
    from talon_rt.runtime.errors import OptionError
    seen = []
    monkeypatch.setattr(Backend, "check_footprint", lambda self, rows, scratch: seen.append((rows, scratch)))
    Generator.open(tiny_engine, policy="eagle3", budget=16).close()
    assert seen == [(16, 70)]
    with pytest.raises(OptionError, match=r"option policy: a round writes up to 70 draft scratch rows; "
                                          r"eng/draft.plan's optimization profile stops at tree_mask width 64"):
        check_profile("eng", 128, 64, 16, 70)
    with pytest.raises(OptionError, match=r"option budget: .* 65 tokens; eng/target.plan's .* q=64"):
        check_profile("eng", 64, 128, 65, 0)
