"""The engine directory, export side: `file_record` for the manifest's `files`, and
`verify_engine_dir`, the runtime's one validator (runtime/validate.py) raising export's error class.
"""
from __future__ import annotations

from pathlib import Path

from talon_rt.export.errors import EngineDirError
from talon_rt.runtime.digest import file_record
from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest import FORMAT_VERSION
from talon_rt.runtime.validate import validate_engine

__all__ = ["FORMAT_VERSION", "file_record", "verify_engine_dir"]


def verify_engine_dir(path: str | Path) -> dict:
    """Check an engine directory as `Generator.open` does (graph I/O aside); returns manifest.json's
    contents. Raises EngineDirError naming the file and field."""
    try:
        return dict(validate_engine(path)[0].raw)
    except EngineError as e:
        raise EngineDirError(str(e)) from None
