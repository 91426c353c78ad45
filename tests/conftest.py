"""Shared fixtures: a tiny random target + EAGLE-3 pair in the real on-disk formats, and its engine dir."""
from __future__ import annotations

import signal

import pytest

from tests.helpers import export_tiny

# A shell's background job starts with SIGINT ignored, and Python then installs no KeyboardInterrupt
# handler (children inherit the ignore): the tests that send Ctrl-C would see nothing. Restore it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(model_dir, draft_dir): 8-layer d=64 Llama (vocab 320, GQA 4/2), EAGLE-3 head (draft vocab 160)."""
    from talon_rt.export.tiny import make_tiny_pair
    return make_tiny_pair(tmp_path_factory.mktemp("tiny_pair"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_pair, tmp_path_factory):
    """Engine directory of `tiny_pair`, flavour standard."""
    return export_tiny(tiny_pair, tmp_path_factory, "standard", "tiny")


@pytest.fixture(scope="session")
def tiny_engine_gqa(tiny_pair, tmp_path_factory):
    """`tiny_engine` with flavour "gqa": GroupQueryAttention writing the KV caches in place."""
    return export_tiny(tiny_pair, tmp_path_factory, "gqa", "tiny-gqa", check=True)   # talon_rt.export.check on gqa too


@pytest.fixture(scope="session")
def tiny_engine_ort(tiny_pair, tmp_path_factory):
    """`tiny_engine` with flavour "ort": ORT's fused ops, row-invariant attention (the export default)."""
    return export_tiny(tiny_pair, tmp_path_factory, "ort", "tiny-ort", check=True)


@pytest.fixture(scope="session")
def tiny_target_engine(tiny_pair, tmp_path_factory):
    """`tiny_pair`'s target alone (no --draft): a target-only engine, flavour standard, with the context
    chosen by the exporter (max_seq_len left out)."""
    from talon_rt.export.build import ExportOptions, export_engine
    out = tmp_path_factory.mktemp("tiny-target") / "tiny-target"
    opts = ExportOptions(dtype="float32", max_tree_tokens=64, max_prefill_chunk=128, flavour="standard")
    return export_engine(tiny_pair[0], None, out, opts, name="tiny-target", check=True)


@pytest.fixture(scope="session", params=["standard", "gqa", "ort"])
def flavour_engine(request):
    """`tiny_engine` in each graph flavour (the losslessness tests run on all of them)."""
    return request.getfixturevalue({"standard": "tiny_engine", "gqa": "tiny_engine_gqa",
                                    "ort": "tiny_engine_ort"}[request.param])


class GpuNeeds:
    """Called first in a gpu-marked test (those run only when selected with `pytest -m gpu`): a missing
    GPU, provider or package FAILS the test with the reason, never skips it."""

    def cuda_ep(self) -> None:
        """onnxruntime's CUDA execution provider and a CUDA device."""
        import onnxruntime as ort

        from talon_rt.runtime.backends import cuda_rt
        from talon_rt.runtime.backends.ort import ort_gpu_conflict
        missing = []
        if cuda_rt.device_count() == 0:
            missing.append("a CUDA device (libcudart " + ("sees none" if cuda_rt._lib() else "not found") + ")")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append(f"onnxruntime-gpu (onnxruntime {ort.__version__} offers "
                           f"{ort.get_available_providers()}{ort_gpu_conflict()})")
        if missing:
            pytest.fail("needs " + " and ".join(missing), pytrace=False)

    def tensorrt(self) -> None:
        """The tensorrt package with a usable CUDA device."""
        from talon_rt.export.trt import TrtUnavailable, load_tensorrt
        try:
            load_tensorrt()
            reason = None
        except TrtUnavailable as e:
            reason = str(e)
        if reason is not None:
            pytest.fail(reason, pytrace=False)


@pytest.fixture
def need() -> GpuNeeds:
    return GpuNeeds()
