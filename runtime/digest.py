"""File digests computed once per process: sha256 and other whole-file facts, keyed by a stat stamp.

A result is reused only while the file keeps its stamp (device, inode, size, mtime_ns, ctime_ns).
Any write through the file system changes mtime and ctime (ctime cannot be set back by a user), so a
file replaced or edited after it was hashed is hashed again. A file that changes while it is being
read is not remembered. Nothing is stored on disk: a new process hashes every file once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

_BLOCK = 1 << 20
_memo: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}   # (kind, real path) -> (stamp, value)


def _stamp(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def memoized(kind: str, path: Path, compute: Callable[[Path], Any]) -> Any:
    """`compute(path)`, reused while `path` keeps its stat stamp."""
    before = _stamp(path)
    key = (kind, os.path.realpath(path))
    hit = _memo.get(key)
    if hit is not None and hit[0] == before:
        return hit[1]
    value = compute(path)
    if _stamp(path) == before:
        _memo[key] = (before, value)
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (computed once per process per stat stamp)."""
    return memoized("sha256", Path(path), _sha256)


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest `files` entry: {"sha256", "bytes"}."""
    return {"sha256": sha256_file(path), "bytes": os.stat(path).st_size}
