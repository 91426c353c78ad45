"""The external-data files an ONNX model references, and where its initializers' bytes sit, read from
its protobuf without onnx installed.

A tensor stored outside the .onnx file names its file in `TensorProto.external_data` (key
"location"). Such tensors can sit in graph initializers, sparse initializers, node attributes
(Constant values), nested graphs (If/Loop bodies), model functions and training graphs; every one
of them is visited. Field numbers are those of onnx.proto (ONNX IR version 10).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# message -> {field number: message it holds}; fields not listed are skipped
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = 0, 1, 2, 3, 4, 5


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= end or shift > 63:
            raise MalformedModel(f"truncated varint at byte {i}")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value start, value end) of each field of the message in [start, end)."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, j = _varint(buf, i, end)
        elif wire == _LEN:
            n, i = _varint(buf, i, end)
            j = i + n
        elif wire == _I64:
            j = i + 8
        elif wire == _I32:
            j = i + 4
        elif wire == _START_GROUP:   # proto2 groups: only in unknown fields, skipped whole
            j = _skip_group(buf, i, end)
        else:
            raise MalformedModel(f"unsupported wire type {wire} at byte {i}")
        if j > end:
            raise MalformedModel(f"field {number} runs past the end of its message (byte {j} > {end})")
        yield number, wire, i, j
        i = j


def _skip_group(buf: memoryview, i: int, end: int) -> int:
    """The byte after the end-group tag matching a start-group whose body begins at `i`."""
    depth = 1
    while depth:
        tag, i = _varint(buf, i, end)
        wire = tag & 7
        if wire == _VARINT:
            _, i = _varint(buf, i, end)
        elif wire == _LEN:
            n, i = _varint(buf, i, end)
            i += n
        elif wire in (_I64, _I32):
            i += 8 if wire == _I64 else 4
        elif wire in (_START_GROUP, _END_GROUP):
            depth += 1 if wire == _START_GROUP else -1
        else:
            raise MalformedModel(f"unsupported wire type {wire} at byte {i}")
        if i > end:
            raise MalformedModel(f"group runs past the end of its message (byte {i} > {end})")
    return i


def _entry(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    """StringStringEntryProto: (key, value)."""
    kv = {1: "", 2: ""}
    for number, wire, s, e in _fields(buf, start, end):
        if number in kv and wire == _LEN:
            kv[number] = bytes(buf[s:e]).decode("utf-8", "replace")
    return kv[1], kv[2]


def _scan(buf: memoryview) -> list[str]:
    found: list[str] = []
    stack = [("model", 0, len(buf))]   # explicit stack: nested graphs cannot exhaust Python's recursion
    while stack:
        kind, start, end = stack.pop()
        children = _SCHEMA[kind]
        for number, wire, s, e in _fields(buf, start, end):
            child = children.get(number)
            if child is None or wire != _LEN:
                continue
            if child == "entry":
                key, value = _entry(buf, s, e)
                if key == "location" and value not in found:
                    found.append(value)
            else:
                stack.append((child, s, e))
    return found


def external_files(path: str | Path) -> list[str]:
    """Every external-data `location` in the ONNX model at `path`, in order of first appearance.

    Raises MalformedModel when the file is not a well-formed protobuf message."""
    with _mapped(path) as view:
        return _scan(view)


@contextmanager
def _mapped(path: str | Path) -> Iterator[memoryview]:
    """The file at `path` as a read-only memoryview of its mapping (MalformedModel when empty)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise MalformedModel("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view
            finally:
                view.release()


def initializer_spans(path: str | Path) -> dict[str, tuple[int, int]]:
    """{name: (offset, length)} of the `raw_data` bytes of each top-level graph initializer stored in
    the file itself (tensors in external data or in typed fields are left out).

    Raises MalformedModel when the file is not a well-formed protobuf message."""
    spans: dict[str, tuple[int, int]] = {}
    with _mapped(path) as view:
        for number, wire, s, e in _fields(view, 0, len(view)):
            if number != 7 or wire != _LEN:          # ModelProto.graph
                continue
            for gn, gw, gs, ge in _fields(view, s, e):
                if gn != 5 or gw != _LEN:            # GraphProto.initializer
                    continue
                name, raw = None, None
                for tn, tw, ts, te in _fields(view, gs, ge):
                    if tn == 8 and tw == _LEN:       # TensorProto.name
                        name = bytes(view[ts:te]).decode("utf-8", "replace")
                    elif tn == 9 and tw == _LEN:     # TensorProto.raw_data
                        raw = (ts, te - ts)
                if name is not None and raw is not None:
                    spans[name] = raw
    return spans
