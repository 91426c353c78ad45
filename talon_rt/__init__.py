"""talon-rt: speculative decoding with adaptive draft trees (TALON) on ONNX Runtime and TensorRT.

    from talon_rt import Generator, export_engine

talon_rt.talon    draft-tree policies, tree tensors, verification (numpy only)
talon_rt.runtime  engine directories, backends, the decode loop, the CLI, serving (no torch)
talon_rt.export   engine export (the `export` extra: torch, onnx, transformers)
talon_rt.train    draft-head training recipes

Both names load on first use: importing talon_rt imports neither onnxruntime nor torch.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["Generator", "export_engine"]

_LAZY = {"Generator": ("talon_rt.runtime.api", "Generator"),
         "export_engine": ("talon_rt.export.build", "export_engine")}


def _source_checkout() -> str | None:
    """The repository root when this package runs from a source checkout (not installed): the folder
    above it then holds talon-rt's pyproject.toml and runtime/, which serve as talon_rt's subpackages."""
    root = Path(__file__).resolve().parent.parent
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if '\nname = "talon-rt"\n' not in project or not (root / "runtime" / "__init__.py").is_file():
        return None
    return str(root)


_root = _source_checkout()
if _root is not None and _root not in __path__:
    __path__.append(_root)
del _root


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'talon_rt' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
