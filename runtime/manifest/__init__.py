"""Read and check an engine directory's manifest and files (docs/engine-format.md, format_version 1).

`open_manifest(dir)` checks, in order: the directory, manifest.json (JSON, schema, format_version),
every file name (plain, inside the directory, no symlink), every external-data file a graph
references (listed in `files`), every file's size and sha256, and that the KV caches fit this
machine's memory. `check_graph_io(manifest, role, inputs, outputs)` checks a graph's declared I/O
against the dims. Every failure is an EngineError naming the file and the field. runtime/validate.py
adds the checks that need the options and the tokenizer; that is the one validator.

schema.py    the typed sections (Manifest, ModelDims, ...) and their parsing, field by field
files.py     file names, external-data references, sizes and sha256 against `files`
memory.py    KV-cache bytes and the check that they fit this machine's memory
graph_io.py  each role's I/O names, dtypes and shapes vs the dims (TensorSpec, check_graph_io)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest.files import check_external_data, check_files, check_references, referenced_files
from talon_rt.runtime.manifest.graph_io import TensorSpec, check_graph_io, expected_io
from talon_rt.runtime.manifest.memory import cache_bytes, check_fits_memory, kv_buffers, physical_memory
from talon_rt.runtime.manifest.schema import (
    DRAFT_ROLES, DRAFT_WEIGHTS, FLAVOURS, FORMAT_VERSION, KV_DTYPES, MANIFEST, ROLES, TARGET_COMPUTE,
    DraftDims, FileEntry, GraphEntry, Limits, Manifest, ModelDims, TokenizerInfo, parse_manifest,
)

__all__ = [
    "DRAFT_ROLES", "DRAFT_WEIGHTS", "FLAVOURS", "FORMAT_VERSION", "KV_DTYPES", "MANIFEST", "ROLES",
    "TARGET_COMPUTE", "DraftDims", "FileEntry", "GraphEntry", "Limits", "Manifest", "ModelDims",
    "TensorSpec", "TokenizerInfo", "cache_bytes", "check_fits_memory", "check_graph_io", "expected_io",
    "kv_buffers", "open_manifest", "physical_memory",
]


def open_manifest(engine_dir: str | os.PathLike[str], verify_checksums: bool = True) -> Manifest:
    """Read and validate `engine_dir/manifest.json` and the files it lists.

    verify_checksums=False skips what reads file contents (external-data references, sizes, sha256,
    memory): for a quick summary only, never before loading."""
    path = _manifest_path(engine_dir)
    manifest = parse_manifest(path.parent, _read_json(path))
    check_references(manifest.dir, manifest.files, referenced_files(manifest))
    if verify_checksums:
        check_files(manifest.dir, manifest.files)
        check_external_data(manifest.dir, manifest.files, manifest.graphs)
        check_fits_memory(sum(kv_buffers(manifest).values()),
                          f"{path}: limits.max_seq_len={manifest.limits.max_seq_len}")
    return manifest


def _manifest_path(engine_dir: str | os.PathLike[str]) -> Path:
    """`engine_dir/manifest.json`, once the directory and the file are there."""
    if not isinstance(engine_dir, (str, os.PathLike)):
        raise EngineError(f"engine directory: expected a path, got {type(engine_dir).__name__} {engine_dir!r:.80}")
    root = Path(engine_dir)
    if not root.is_dir():
        raise EngineError(f"engine directory not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        raise EngineError(f"{path}: missing (not an engine directory?)")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EngineError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise EngineError(f"{path}: not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise EngineError(f"{path}: invalid JSON: nested too deeply") from None
    except OSError as e:
        raise EngineError(f"{path}: cannot read ({e.strerror})") from None
