"""A minimal CUDA runtime binding through ctypes (no extra dependency): device count, malloc,
memcpy (1-D and 2-D, optionally async on a stream), streams. Used by the ORT CUDA commit and TensorRT.
"""

from __future__ import annotations

import ctypes
import ctypes.util

H2D, D2H, D2D = 1, 2, 3
_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
_LOADED: list[ctypes.CDLL] = []   # the library once found; a failed lookup is retried on the next call
_PRELOADED: list[bool] = []


def preload_pip_cuda() -> None:
    """CUDA libraries installed from PyPI (`onnxruntime-gpu[cuda,cudnn]`, docs/gpu.md) are not on the
    loader's path: onnxruntime-gpu's `preload_dlls` loads them into the process (it returns at once
    in the CPU build, and prints what it cannot load)."""
    if _PRELOADED:
        return
    _PRELOADED.append(True)
    try:
        import onnxruntime
    except ImportError:
        return
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is not None:
        preload()


def _lib() -> ctypes.CDLL | None:
    if _LOADED:
        return _LOADED[0]
    preload_pip_cuda()
    found = ctypes.util.find_library("cudart")
    for name in ((found,) if found else ()) + _NAMES:
        try:
            _LOADED.append(ctypes.CDLL(name))
        except OSError:
            continue
        return _LOADED[0]
    return None


def device_count() -> int:
    lib = _lib()
    if lib is None:
        return 0
    n = ctypes.c_int(0)
    return n.value if lib.cudaGetDeviceCount(ctypes.byref(n)) == 0 else 0


class CudaRT:
    H2D, D2H, D2D = H2D, D2H, D2D

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        sz = ctypes.c_size_t
        lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), sz]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, sz, ctypes.c_int]
        lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p, sz, ctypes.c_int, ctypes.c_void_p]
        lib.cudaMemcpy2DAsync.argtypes = [ctypes.c_void_p, sz, ctypes.c_void_p, sz, sz, sz, ctypes.c_int,
                                          ctypes.c_void_p]
        lib.cudaMemcpy2D.argtypes = [ctypes.c_void_p, sz, ctypes.c_void_p, sz, sz, sz, ctypes.c_int]
        lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"CUDA {what} failed: {self.lib.cudaGetErrorString(rc).decode()}")

    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(p), max(nbytes, 1)), f"cudaMalloc({nbytes})")
        return int(p.value)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream: int | None = None) -> None:
        if stream is None:
            self._check(self.lib.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")
        else:
            self._check(self.lib.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def memcpy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: int,
                 stream: int | None = None) -> None:
        """height rows of width bytes, rows dpitch / spitch bytes apart."""
        if stream is None:
            self._check(self.lib.cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind), "cudaMemcpy2D")
        else:
            self._check(self.lib.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream),
                        "cudaMemcpy2DAsync")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def sync(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def copy_rows(cuda: CudaRT, cache: int, new: int, kvh: int, row_bytes: int, S: int, q: int, past_len: int,
              rows, stream: int | None = None) -> None:
    """KV rows on the device: new [kvh, q, row] rows `rows` -> cache [kvh, S, row] rows past_len + j."""
    n = len(rows)
    if n and int(rows[-1]) == n - 1:   # rows 0..n-1 (a prefix): one 2-D copy
        cuda.memcpy2d(cache + past_len * row_bytes, S * row_bytes, new, q * row_bytes, n * row_bytes, kvh,
                      D2D, stream)
        return
    for j, r in enumerate(rows):
        cuda.memcpy2d(cache + (past_len + j) * row_bytes, S * row_bytes, new + int(r) * row_bytes, q * row_bytes,
                      row_bytes, kvh, D2D, stream)


def compact_rows(cuda: CudaRT, cache: int, kvh: int, row_bytes: int, S: int, past_len: int, rows,
                 stream: int | None = None) -> None:
    """In-place KV (flavour "gqa"): cache rows past_len + rows[j] -> past_len + j, for a path `rows`.

    rows ascend with rows[j] >= j, so copying in ascending j on one stream never reads a row an
    earlier copy overwrote; rows already in place (rows[j] == j) are skipped.
    """
    for j, r in enumerate(rows):
        if int(r) != j:
            cuda.memcpy2d(cache + (past_len + j) * row_bytes, S * row_bytes, cache + (past_len + int(r)) * row_bytes,
                          S * row_bytes, row_bytes, kvh, D2D, stream)


def load() -> CudaRT:
    lib = _lib()
    if lib is None:
        raise RuntimeError("the CUDA runtime library (libcudart) was not found")
    return CudaRT(lib)
