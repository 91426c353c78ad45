"""GPU backends (marked gpu: run with `pytest -m gpu`, where a missing GPU, onnxruntime-gpu or
tensorrt FAILS with the reason): ORT CUDA EP and TensorRT produce the ORT CPU greedy output of the
tiny pair for every policy, on the providers and shapes they claim."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import OptionError

pytestmark = pytest.mark.gpu

PROMPTS = [[1] + np.random.default_rng(i).integers(3, 320, size=12).tolist() for i in range(5)]
POLICIES = ("ar", "chain", "eagle3", "talon")


def _cpu_reference(engine) -> list[list[int]]:
    with Generator.open(engine, policy="ar", backend="ort-cpu") as gen:
        return [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]


def _agree(got: list[list[int]], want: list[list[int]]) -> float:
    """Share of prompts whose output equals the CPU one (a GPU near-tie may flip one)."""
    return sum(a == b for a, b in zip(got, want)) / len(want)


def test_ort_cuda_matches_cpu(tiny_engine, need):
    need.cuda_ep()
    want = _cpu_reference(tiny_engine)
    for policy in POLICIES:
        with Generator.open(tiny_engine, policy=policy, backend="ort-cuda") as gen:
            backend = gen._decoder.backend
            for graph in (backend._target, backend._fc, backend._draft):   # the sessions, not the request
                assert graph.session.get_providers()[0] == "CUDAExecutionProvider", policy
            got = [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]
        assert _agree(got, want) >= 0.8, policy


def test_ort_cuda_sampling_is_seeded(tiny_engine, need):
    """Sampling reads the logits through host-bound outputs: same seed, same tokens, twice."""
    need.cuda_ep()
    runs = []
    for _ in range(2):
        with Generator.open(tiny_engine, policy="talon", backend="ort-cuda", temperature=1.0, seed=7) as gen:
            runs.append([gen.generate(p, max_new_tokens=32).tokens for p in PROMPTS])
    assert runs[0] == runs[1]


def _trt_engine(tiny_engine, tmp_path, need):
    need.tensorrt()
    from talon_rt.export.trt import build_engine_plans
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    build_engine_plans(eng)
    return eng


def test_tensorrt_matches_cpu(tiny_engine, tmp_path, need):
    trt_engine = _trt_engine(tiny_engine, tmp_path, need)
    want = _cpu_reference(trt_engine)
    for policy in POLICIES:
        with Generator.open(trt_engine, policy=policy) as gen:   # auto picks TensorRT when plans exist
            assert gen.backend == "tensorrt"
            backend = gen._decoder.backend
            got = [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]
            mallocs = []
            malloc = backend.cuda.malloc
            backend.cuda.malloc = lambda n: mallocs.append(n) or malloc(n)
            gen.generate(PROMPTS[0], max_new_tokens=48)
            assert mallocs == [], "a generation allocated device memory"
        assert _agree(got, want) >= 0.8, policy


def test_tensorrt_profiles_come_from_the_policy_footprints(tiny_engine, tmp_path, need):
    trt_engine = _trt_engine(tiny_engine, tmp_path, need)
    from talon_rt.export.engine_dir import verify_engine_dir
    from talon_rt.export.trt import draft_mask_width
    m = verify_engine_dir(trt_engine)
    with Generator.open(trt_engine, policy="eagle3") as gen:
        backend = gen._decoder.backend
        assert backend.target_q == 128 and backend.draft_t == draft_mask_width(m)   # read from the plans
    with pytest.raises(OptionError, match="draft.plan's optimization profile stops at tree_mask width"):
        Generator.open(trt_engine, policy="eagle3", eagle3_top_k=32, eagle3_depth=7)
