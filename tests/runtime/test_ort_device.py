"""The ORT CUDA path's host/device logic, checked on the CPU (no GPU here).

ORT copies a host input to the device that consumes it when the input is *bound*
(IOBinding::BindInput -> CopyOneInputAcrossDevices), not when the graph runs. `copy_at_bind` makes
ORT's CPU IOBinding do the same: every input bound from memory outside the emulated device is
snapshotted at bind time. `HostDeviceIO` is the CUDA strategy (runtime/backends/ort_io.py) with its
"device" buffers in separate host arrays and its device copies recorded.

What this proves: the CUDA strategy feeds every call its own inputs under bind-time-copy semantics
(the cached host bindings of the old code do not: the negative control), the KV bookkeeping and the
features -> draft_fc gather on the device give the CPU tokens, and features never cross to the host.
What it cannot prove: that CUDA kernels, streams and ORT's CUDA allocator behave as emulated.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_inference_collection import IOBinding

from talon_rt.runtime.api import Generator
from talon_rt.runtime.backends import cuda_rt, resolve_backend
from talon_rt.runtime.backends import ort as ort_backend
from talon_rt.runtime.backends.ort import OrtBackend, check_providers, session_providers
from talon_rt.runtime.backends.ort_io import DeviceIO
from talon_rt.runtime.decode import Decoder
from talon_rt.runtime.errors import EngineError, OptionError
from talon_rt.runtime.manifest import open_manifest
from talon_rt.runtime.options import resolve_options

PROMPTS = [[1] + np.random.default_rng(i).integers(3, 320, size=12).tolist() for i in range(3)]
RUNS = [{"policy": "ar"}, {"policy": "talon", "budget": 12}, {"policy": "eagle3", "budget": 16},
        {"policy": "chain"}, {"policy": "talon", "temperature": 1.0, "seed": 3}]


class RecordingCuda:
    """cuda_rt's memcpy / memcpy2d / sync over host memory; records (kind, bytes) of every copy."""

    def __init__(self) -> None:
        self.log: list[tuple[int, int]] = []

    def memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream: int | None = None) -> None:
        ctypes.memmove(dst, src, nbytes)
        self.log.append((kind, nbytes))

    def memcpy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int,
                 stream: int | None = None) -> None:
        for h in range(height):
            ctypes.memmove(dst + h * dpitch, src + h * spitch, width)
        self.log.append((kind, width * height))

    def sync(self, stream: int) -> None:
        pass


class HostDeviceIO(DeviceIO):
    """DeviceIO whose device buffers are separate host arrays (ORT's CPU EP reads them)."""
    device = "cpu"

    def __init__(self, dtype: type):
        super().__init__(RecordingCuda(), dtype)
        self.arrays: list[np.ndarray] = []

    def alloc(self, n: int, dtype: type) -> np.ndarray:
        self.arrays.append(np.zeros(n, dtype))
        return self.arrays[-1]

    def ptr(self, buf: np.ndarray) -> int:
        return buf.ctypes.data

    def owns(self, ptr: int) -> bool:
        return any(a.ctypes.data <= ptr < a.ctypes.data + a.nbytes for a in self.arrays)


class CachedHostInputsIO(HostDeviceIO):
    """The old scheme on a device: host inputs bound once per q and rewritten in place."""
    rebind_inputs = False


def copy_at_bind(monkeypatch, io: HostDeviceIO) -> None:
    """Bind-time copy, as ORT does for a host input of a device graph: snapshot the host memory."""
    original = IOBinding.bind_input
    snapshots: list[np.ndarray] = []

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        if not io.owns(buffer_ptr):
            dt = np.dtype(element_type)
            raw = (ctypes.c_uint8 * (int(np.prod(shape)) * dt.itemsize)).from_address(buffer_ptr)
            snapshots.append(np.frombuffer(raw, np.uint8).copy())
            buffer_ptr = snapshots[-1].ctypes.data
        return original(self, name, device_type, device_id, element_type, shape, buffer_ptr)

    monkeypatch.setattr(IOBinding, "bind_input", bind_input)


def _generate(engine, io=None) -> list[list[int]]:
    m = open_manifest(engine)
    out = []
    for run in RUNS:
        decoder = Decoder(OrtBackend(m, io=io), m, resolve_options(m, run))
        out += [decoder.generate(p, 24).tokens for p in PROMPTS]
    return out


def test_device_io_feeds_every_call_its_own_inputs(tiny_engine, monkeypatch):
    want = _generate(tiny_engine)
    io = HostDeviceIO(np.float32)
    copy_at_bind(monkeypatch, io)
    assert _generate(tiny_engine, io) == want
    kinds = {kind for kind, _ in io.cuda.log}
    assert kinds == {cuda_rt.D2D}, "features and K/V rows move on the device only"


def test_cached_host_bindings_go_stale_under_bind_time_copies(tiny_engine, monkeypatch):
    """Negative control: the emulation catches the bug the CUDA strategy fixes."""
    want = _generate(tiny_engine)
    io = CachedHostInputsIO(np.float32)
    copy_at_bind(monkeypatch, io)
    try:
        got: object = _generate(tiny_engine, io)
    except RuntimeError as e:   # a stale past_len can make a negative shape inside the graph
        got = str(e)
    assert got != want


def test_ort_cuda_refuses_gqa_graphs(tiny_engine_gqa):
    with pytest.raises(OptionError, match=r"'ort-cuda' cannot run flavour 'gqa'.*attention_bias.*"
                                          r"graphs\.target\.flavour 'gqa'"):
        Generator.open(tiny_engine_gqa, backend="ort-cuda")


def test_auto_picks_ort_cuda_only_for_standard_graphs(tiny_engine, tiny_engine_gqa, monkeypatch):
    monkeypatch.setattr(ort_backend, "cuda_available", lambda: True)
    monkeypatch.setattr("talon_rt.runtime.backends._gpu_present", lambda: True)
    assert resolve_backend(open_manifest(tiny_engine), "auto") == "ort-cuda"
    assert resolve_backend(open_manifest(tiny_engine_gqa), "auto") == "ort-cpu"


def test_cuda_session_options_and_provider_check():
    cuda, _ = session_providers("cuda")
    assert cuda == ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})

    class Fallen:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(EngineError, match=r"target\.onnx: onnxruntime created the session on "
                                          r"\['CPUExecutionProvider'\], not CUDAExecutionProvider"):
        check_providers(Fallen(), "target.onnx", "cuda")
    check_providers(Fallen(), "target.onnx", "cpu")
