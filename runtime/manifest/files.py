"""An engine directory's files against its manifest: plain names inside the directory, every
external-data file a graph references listed, every listed file present with its size and sha256."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from talon_rt.runtime.digest import memoized, sha256_file
from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest.schema import MANIFEST, FileEntry, GraphEntry, Manifest, field_error
from talon_rt.runtime.onnx_refs import MalformedModel, external_files


def _check_name(root: Path, name: str, field: str) -> Path:
    """A manifest file name must be a plain name of a regular file inside the directory."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or os.path.isabs(name) or ":" in name):
        raise field_error(field, f"{name!r} is not a plain file name inside the engine directory")
    path = root / name
    if path.is_symlink():
        raise field_error(field, f"{name!r} is a symbolic link; engine files must be regular files")
    if path.exists() and path.resolve().parent != root.resolve():
        raise field_error(field, f"{name!r} resolves outside the engine directory")
    return path


def _external_data(root: Path, graph: str) -> list[str]:
    """The external-data files `graph` references (names as written in the graph)."""
    path = root / graph
    if not path.is_file():
        raise EngineError(f"{path}: missing (listed in {MANIFEST} graphs)")
    try:
        return memoized("onnx-external-data", path, external_files)
    except MalformedModel as e:
        # what onnxruntime's protobuf parser would refuse as well
        raise EngineError(f"{path}: onnxruntime cannot load the graph: not a well-formed ONNX protobuf "
                          f"({e})") from None


def check_references(root: Path, files: Mapping[str, FileEntry], referenced: Mapping[str, str]) -> None:
    """Every file the manifest names is a plain name listed in `files`."""
    for field, name in referenced.items():
        _check_name(root, name, field)
        if name not in files:
            raise field_error(field, f"{name!r} is not listed in 'files' (every engine file needs a checksum)")


def check_external_data(root: Path, files: Mapping[str, FileEntry], graphs: Mapping[str, GraphEntry]) -> None:
    """Every external-data file a graph references is listed in `files` (so it was checksummed)."""
    for role, g in graphs.items():
        for name in _external_data(root, g.file):
            _check_name(root, name, f"graphs.{role}.file {g.file!r} external data")
            if name not in files:
                raise EngineError(f"{root / g.file}: references external data {name!r}, which is not listed "
                                  f"in {MANIFEST} files (every engine file needs a checksum)")


def check_files(root: Path, files: Mapping[str, FileEntry]) -> None:
    for name, entry in files.items():
        path = _check_name(root, name, f"files.{name}")
        if not path.is_file():
            raise EngineError(f"{root / name}: missing (listed in {MANIFEST} files)")
        size = path.stat().st_size
        if size != entry.bytes:
            raise EngineError(f"{root / name}: size {size} bytes != {MANIFEST} files.{name}.bytes={entry.bytes}")
    for name, entry in files.items():     # sizes first: a truncated copy fails before any hashing
        digest = sha256_file(root / name)
        if digest != entry.sha256:
            raise EngineError(f"{root / name}: checksum mismatch (sha256 {digest[:16]}... != "
                              f"{MANIFEST} files.{name}.sha256 {entry.sha256[:16]}...)")



def referenced_files(m: Manifest) -> dict[str, str]:
    """{manifest field: file name} of every file the manifest names outside `files`."""
    referenced = {f"graphs.{r}.file": g.file for r, g in m.graphs.items()}
    referenced["tokenizer.file"] = m.tokenizer.file
    return referenced
