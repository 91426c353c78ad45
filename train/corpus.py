"""The stdlib corpus: the CPython standard-library sources of the running interpreter.

Files are split into train / held-out by a fixed hash rule on their path relative to the stdlib
root, so every machine with the same Python version gets the same split, and the split never
depends on which files happen to exist. The chosen held-out list is written next to the data.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Directories whose sources are test data, vendored packages or generated tables, not stdlib code.
SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "encodings", "__pycache__"})
HELDOUT_MOD = 20  # 1 file in 20 (5 %) is held out: enough positions for a stable loss estimate


@dataclass(frozen=True)
class CorpusFile:
    rel: str     # path relative to the stdlib root, '/'-separated
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(rel: str) -> bool:
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % HELDOUT_MOD == 0


def list_files(root: Path | None = None) -> list[str]:
    """Relative paths of the corpus files, sorted (the order is part of the recipe)."""
    root = root or stdlib_root()
    rels = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        rels.append(rel.as_posix())
    return sorted(rels)


def load(root: Path | None = None, limit: int | None = None) -> tuple[list[CorpusFile], list[CorpusFile]]:
    """(train, heldout) files. `limit` keeps the first `limit` files of each split (smoke tests)."""
    root = root or stdlib_root()
    train, heldout = [], []
    for rel in list_files(root):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        (heldout if is_heldout(rel) else train).append(CorpusFile(rel, text))
    if limit is not None:
        train, heldout = train[:limit], heldout[: max(1, limit // 4)]
    return train, heldout
