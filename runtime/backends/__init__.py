"""Engine backends and their selection (`backend` option: auto | ort-cpu | ort-cuda | tensorrt)."""

from __future__ import annotations

from talon_rt.runtime.backends.base import Backend
from talon_rt.runtime.errors import OptionError
from talon_rt.runtime.manifest import Manifest

__all__ = ["Backend", "open_backend", "resolve_backend"]


def _gpu_present() -> bool:
    from talon_rt.runtime.backends import cuda_rt
    return cuda_rt.device_count() > 0


def resolve_backend(m: Manifest, backend: str) -> str:
    """`auto`: TensorRT when every graph has a plan and a GPU + tensorrt are present, else ORT CUDA
    when onnxruntime-gpu sees a device and the graphs are flavour standard, else ORT CPU."""
    if backend != "auto":
        return backend
    from talon_rt.runtime.backends.ort import cuda_available
    if all(m.plan(r) is not None for r in m.roles) and _gpu_present():
        from talon_rt.runtime.backends.trt import trt_available
        if trt_available():
            return "tensorrt"
    standard = all(m.graphs[r].flavour == "standard" for r in m.roles)
    if standard and cuda_available() and _gpu_present():
        return "ort-cuda"
    return "ort-cpu"


def open_backend(m: Manifest, backend: str, threads: int, thread_mode: str) -> Backend:
    name = resolve_backend(m, backend)
    if name == "tensorrt":
        from talon_rt.runtime.backends.trt import TrtBackend
        return TrtBackend(m)
    from talon_rt.runtime.backends.ort import OrtBackend
    if name == "ort-cuda":
        return OrtBackend(m, device="cuda", threads=threads, thread_mode=thread_mode)
    if name == "ort-cpu":
        return OrtBackend(m, device="cpu", threads=threads, thread_mode=thread_mode)
    raise OptionError(f"option backend: unknown backend {name!r}")
