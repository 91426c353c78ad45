"""GPU backends (marked gpu; skipped with the reason on machines without them): ORT CUDA EP and
TensorRT produce the ORT CPU greedy output of the tiny pair for every policy."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from runtime.api import Generator
from runtime.backends import cuda_rt

pytestmark = pytest.mark.gpu

GPU = cuda_rt.device_count() > 0
CUDA_EP = "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
TRT = importlib.util.find_spec("tensorrt") is not None

PROMPTS = [[1] + np.random.default_rng(i).integers(3, 320, size=12).tolist() for i in range(5)]


def _cpu_reference(engine) -> list[list[int]]:
    with Generator.open(engine, policy="ar", backend="ort-cpu") as gen:
        return [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]


def _agree(got: list[list[int]], want: list[list[int]]) -> float:
    """Share of prompts whose output equals the CPU one (a GPU near-tie may flip one)."""
    return sum(a == b for a, b in zip(got, want)) / len(want)


@pytest.mark.skipif(not (GPU and CUDA_EP), reason="needs onnxruntime-gpu and a CUDA device")
def test_ort_cuda_matches_cpu(tiny_engine):
    want = _cpu_reference(tiny_engine)
    for policy in ("ar", "chain", "eagle3", "talon"):
        with Generator.open(tiny_engine, policy=policy, backend="ort-cuda") as gen:
            assert gen.backend == "ort-cuda"
            got = [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]
        assert _agree(got, want) >= 0.8, policy


@pytest.mark.skipif(not (GPU and TRT), reason="needs the tensorrt package and a CUDA device")
def test_tensorrt_matches_cpu(tiny_engine, tmp_path):
    import tensorrt as trt
    from export.trt import build_engine_plans
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    build_engine_plans(eng)
    want = _cpu_reference(eng)
    for policy in ("ar", "chain", "eagle3", "talon"):
        with Generator.open(eng, policy=policy) as gen:   # auto picks TensorRT when plans exist
            assert gen.backend == "tensorrt", trt.__version__
            got = [gen.generate(p, max_new_tokens=48).tokens for p in PROMPTS]
            ids = gen._decoder.backend.buffer_ids()
            gen.generate(PROMPTS[0], max_new_tokens=48)
            assert gen._decoder.backend.buffer_ids() == ids
        assert _agree(got, want) >= 0.8, policy
