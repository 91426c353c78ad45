"""Write a swept talon configuration (budget, and mu / root_k when swept) into an engine's manifest defaults.

manifest.json is not among the checksummed `files`, so editing its `defaults` keeps every sha256
valid; the result is re-read with checksums verified, and the old file is put back on any error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest import MANIFEST, open_manifest
from talon_rt.runtime.options import resolve_options


def write_defaults(engine_dir: str | os.PathLike[str], best: dict) -> Path:
    """Set `defaults.budget` (and `mu`, `root_k` where `best` names them) of engine_dir/manifest.json
    from `metrics.best_budget`'s answer; returns the manifest's path."""
    return write_default_budget(engine_dir, best["budget"], mu=best.get("mu"), root_k=best.get("root_k"))


def write_default_budget(engine_dir: str | os.PathLike[str], budget: int, mu: float | None = None,
                         root_k: int | None = None) -> Path:
    """Set `defaults.budget` (and mu, root_k if given) of engine_dir/manifest.json; returns its path."""
    path = Path(engine_dir) / MANIFEST
    before = path.read_bytes()
    raw = json.loads(before)
    if not isinstance(raw.get("defaults"), dict):
        raise EngineError(f"{path}: field defaults: expected an object")
    raw["defaults"]["budget"] = int(budget)
    if mu is not None:
        raw["defaults"]["mu"] = float(mu)
    if root_k is not None:
        raw["defaults"]["root_k"] = int(root_k)
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    try:
        resolve_options(open_manifest(engine_dir, verify_checksums=True), {})
    except Exception:
        path.write_bytes(before)
        raise
    return path
