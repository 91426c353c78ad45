"""Benchmark prompt files (bench/prompts/*.jsonl): one JSON object per line, {"id": ..., "prompt": ...}."""
from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in rows),
                    encoding="utf-8")
