"""The engine directory on disk: file records for the manifest, and a minimal verifier.

The runtime validates a manifest on its own (runtime/); `verify_engine_dir` is the export side's
check that what it wrote is complete and intact (docs/engine-format.md).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from export.errors import EngineDirError

FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def check_plain_name(name: str, field: str) -> None:
    """A manifest path must be a plain file name inside the engine directory."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith("~"):
        raise EngineDirError(f"manifest.json: {field} = {name!r} is not a plain file name in the engine directory")


def verify_engine_dir(path: str | Path) -> dict:
    """Check manifest.json and every file it lists (name, presence, size, sha256). Returns the manifest."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise EngineDirError(f"{mpath}: not found")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EngineDirError(f"{mpath}: not valid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EngineDirError(f"{mpath}: format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}")
    for key in ("model", "draft", "tokenizer", "limits", "defaults", "graphs", "files"):
        if not isinstance(manifest.get(key), dict):
            raise EngineDirError(f"{mpath}: field {key!r} is missing or not an object")
    files = manifest["files"]
    named = [(f"graphs.{k}.file", g.get("file")) for k, g in manifest["graphs"].items()]
    named.append(("tokenizer.file", manifest["tokenizer"].get("file")))
    for field, name in named:
        check_plain_name(name, field)
        if name not in files:
            raise EngineDirError(f"{mpath}: {field} = {name!r} is not listed in 'files'")
    for name, rec in files.items():
        check_plain_name(name, f"files[{name!r}]")
        fpath = root / name
        if fpath.is_symlink():
            raise EngineDirError(f"{fpath}: is a symlink (engine files must be plain files)")
        if not fpath.is_file():
            raise EngineDirError(f"{fpath}: listed in manifest.json but missing")
        size = fpath.stat().st_size
        if size != rec.get("bytes"):
            raise EngineDirError(f"{fpath}: size {size} bytes, manifest.json says {rec.get('bytes')}")
        if sha256_file(fpath) != rec.get("sha256"):
            raise EngineDirError(f"{fpath}: sha256 does not match manifest.json (file corrupted or replaced)")
    return manifest
