"""Where the ORT backend's buffers live and how data moves between them: one strategy per device.

`HostIO` (CPU EP): every buffer is host memory bound in place. A graph reads its inputs from the
very arrays the loop rewrites, so one IOBinding per call size q serves every call.

`DeviceIO` (CUDA EP): the K/V caches, the target's `features` and the greedy `logits` are device
buffers; `draft_fc` reads its feature rows from a device buffer filled by a device -> device gather,
so features never cross to the host. Small host inputs (ids, positions, mask, past length, the
draft's hidden rows) are *re-bound before every run*: ORT copies a host input to the device that
consumes it when it is bound (IOBinding::BindInput -> CopyOneInputAcrossDevices), not when the graph
runs, so a binding cached across calls would feed every later call the first call's values.
Outputs read on the host stay bound to host arrays: ORT copies those after each run.

Device copies go through `talon_rt.runtime.backends.cuda_rt` (or anything with its memcpy / memcpy2d / sync
interface: the tests pass a recorder over host memory). The copies run on the legacy default stream
after `run_with_iobinding` has synchronised ORT's stream and are synchronised before returning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class KVLayout:
    """A cache `[slabs, heads, S, head_dim]` and its new-rows buffer `[slabs, heads * q_max * head_dim]`
    (a call's q new rows are the prefix `[heads, q, head_dim]` of each slab)."""
    slabs: int
    heads: int
    head_dim: int
    S: int
    q_max: int


class HostIO:
    """Host memory, written and read in place (CPU EP)."""
    device = "cpu"          # ORT device name of the buffers from alloc()
    resident = False        # True when alloc() buffers are apart from the host
    rebind_inputs = False   # host inputs re-bound before every run

    def alloc(self, n: int, dtype: type) -> Any:
        return np.zeros(n, dtype=dtype)

    def ptr(self, buf: Any) -> int:
        return buf.ctypes.data

    def gather_rows(self, dst: Any, src: Any, rows: np.ndarray, width: int, q: int, at: int = 0) -> None:
        """dst rows [at, at+n) = src rows `rows` of a [q, width] array (n = len(rows))."""
        n = rows.shape[0]
        np.take(src[:q * width].reshape(q, width), rows, axis=0,
                out=dst[at * width:(at + n) * width].reshape(n, width))

    def store_rows(self, kv: KVLayout, cache: Any, new: Any, past_len: int, q: int,
                   rows: np.ndarray | None) -> None:
        """new rows `rows` (None: all q, in order) -> cache rows [past_len, past_len + a), every slab."""
        new4 = new.reshape(kv.slabs, -1)[:, :kv.heads * q * kv.head_dim].reshape(kv.slabs, kv.heads, q, kv.head_dim)
        cache4 = cache.reshape(kv.slabs, kv.heads, kv.S, kv.head_dim)
        a = q if rows is None else rows.shape[0]
        if rows is None or a == q or rows[-1] == a - 1:   # rows are 0..a-1: the accepted path is a prefix
            cache4[:, :, past_len:past_len + a] = new4[:, :, :a]
        else:
            cache4[:, :, past_len:past_len + a] = new4[:, :, rows]

    def compact_rows(self, kv: KVLayout, cache: Any, past_len: int, rows: np.ndarray) -> None:
        """In-place cache (flavour gqa): rows past_len + rows[j] -> past_len + j (rows not a prefix)."""
        a = rows.shape[0]
        cache4 = cache.reshape(kv.slabs, kv.heads, kv.S, kv.head_dim)
        cache4[:, :, past_len:past_len + a] = cache4[:, :, past_len + rows]   # fancy index: a temporary of a rows


class DeviceIO(HostIO):
    """Device buffers (CUDA EP) moved with a CUDA-runtime-like `cuda` object."""
    device = "cuda"
    resident = True
    rebind_inputs = True

    def __init__(self, cuda: Any, dtype: type):
        self.cuda = cuda
        self.itemsize = np.dtype(dtype).itemsize   # of the K/V caches and features

    def alloc(self, n: int, dtype: type) -> Any:
        import onnxruntime as ort
        return ort.OrtValue.ortvalue_from_shape_and_type([n], dtype, "cuda", 0)

    def ptr(self, buf: Any) -> int:
        return buf.data_ptr()

    def gather_rows(self, dst: Any, src: Any, rows: np.ndarray, width: int, q: int, at: int = 0) -> None:
        from talon_rt.runtime.backends.cuda_rt import D2D
        n, row = rows.shape[0], width * self.itemsize
        d, s = self.ptr(dst) + at * row, self.ptr(src)
        if rows[-1] == n - 1:   # rows 0..n-1: one copy
            self.cuda.memcpy(d, s, n * row, D2D)
        else:
            for j, r in enumerate(rows):
                self.cuda.memcpy(d + j * row, s + int(r) * row, row, D2D)
        self.cuda.sync(0)

    def store_rows(self, kv: KVLayout, cache: Any, new: Any, past_len: int, q: int,
                   rows: np.ndarray | None) -> None:
        from talon_rt.runtime.backends.cuda_rt import copy_rows
        row = kv.head_dim * self.itemsize
        rows = np.arange(q) if rows is None else rows
        c, n = self.ptr(cache), self.ptr(new)
        for s in range(kv.slabs):
            copy_rows(self.cuda, c + s * kv.heads * kv.S * row, n + s * kv.heads * kv.q_max * row, kv.heads, row,
                      kv.S, q, past_len, rows)
        self.cuda.sync(0)

    def compact_rows(self, kv: KVLayout, cache: Any, past_len: int, rows: np.ndarray) -> None:
        from talon_rt.runtime.backends.cuda_rt import compact_rows
        row = kv.head_dim * self.itemsize
        c = self.ptr(cache)
        for s in range(kv.slabs):
            compact_rows(self.cuda, c + s * kv.heads * kv.S * row, kv.heads, row, kv.S, past_len, rows)
        self.cuda.sync(0)
