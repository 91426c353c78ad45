"""Plain functions the tests share: the tiny pair's export and copies of engine directories with an
edited manifest (fixtures stay in conftest.py)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def copy_engine(engine: Path, dst: Path) -> Path:
    """A copy of the engine directory `engine` at `dst`."""
    shutil.copytree(engine, dst)
    return dst


def edit_manifest(engine: Path, edit) -> None:
    """Rewrite `engine`/manifest.json after `edit(dict)` changed it in place."""
    manifest = json.loads((engine / "manifest.json").read_text())
    edit(manifest)
    (engine / "manifest.json").write_text(json.dumps(manifest))


def relist(engine: Path, name: str) -> None:
    """Set files[name] to the file as it is now (only the check under test then fails)."""
    data = (engine / name).read_bytes()
    edit_manifest(engine, lambda m: m["files"].__setitem__(name, {"sha256": hashlib.sha256(data).hexdigest(),
                                                                  "bytes": len(data)}))


def edited_engine(engine: Path, out: Path, edit) -> Path:
    """A copy of the engine directory `engine` at `out` whose manifest.json went through `edit(dict)`."""
    edit_manifest(copy_engine(engine, out), edit)
    return out


def export_tiny(tiny_pair, tmp_path_factory, flavour: str, name: str, check: bool = False, **options):
    """`tiny_pair` exported fp32 with max_seq_len 256, max_tree_tokens 64, max_prefill_chunk 128, k_max 32
    (and any other ExportOptions field in `options`)."""
    from talon_rt.export.build import ExportOptions, export_engine
    model_dir, draft_dir = tiny_pair
    out = tmp_path_factory.mktemp(name) / name
    opts = ExportOptions(dtype="float32", max_seq_len=256, max_tree_tokens=64, max_prefill_chunk=128, k_max=32,
                         flavour=flavour, **options)
    return export_engine(model_dir, draft_dir, out, opts, name=name, check=check)
