"""`python -m talon_rt.export` and `make export` end to end on the tiny pair (subprocesses, as a user runs them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from talon_rt.export.engine_dir import verify_engine_dir

ROOT = Path(__file__).resolve().parents[2]


def _export(*args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "talon_rt.export", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_round_trip(tiny_pair, tmp_path):
    model_dir, draft_dir = tiny_pair
    out = tmp_path / "engines" / "cli"
    r = _export("--model", model_dir, "--draft", draft_dir, "--out", out, "--name", "cli-tiny",
                "--max-seq-len", 128, "--max-tree-tokens", 32, "--max-prefill-chunk", 64, "--k-max", 8, "--check")
    assert r.returncode == 0, r.stderr
    for stage in ("loaded target", "loaded EAGLE-3 head", "target.onnx", "draft_fc.onnx", "draft.onnx",
                  "manifest.json", "checked against the reference", "engine directory ready"):
        assert stage in r.stderr
    m = verify_engine_dir(out)
    assert m["name"] == "cli-tiny" and m["draft"]["k_max"] == 8
    assert m["limits"] == {"max_seq_len": 128, "max_tree_tokens": 32, "max_prefill_chunk": 64}
    assert m["defaults"]["budget"] == 16
    assert [p.name for p in out.parent.iterdir()] == ["cli"]  # no temp dir left behind

    again = _export("--model", model_dir, "--draft", draft_dir, "--out", out)
    assert again.returncode == 1 and "already exists (use --force" in again.stderr
    forced = _export("--model", model_dir, "--draft", draft_dir, "--out", out, "--force", "--k-max", 4)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "manifest.json").read_text())["draft"]["k_max"] == 4


def test_cli_errors_are_one_line_and_leave_nothing(tiny_pair, tmp_path):
    model_dir, draft_dir = tiny_pair
    out = tmp_path / "engines" / "bad"
    r = _export("--model", tmp_path / "nope", "--draft", draft_dir, "--out", out)
    assert r.returncode == 1 and "--model" in r.stderr and "not a directory" in r.stderr
    assert "Traceback" not in r.stderr
    r = _export("--model", model_dir, "--draft", draft_dir, "--out", out, "--k-max", 999)
    assert r.returncode == 1 and "--k-max 999 exceeds the head's draft_vocab_size 160" in r.stderr
    r = _export("--model", model_dir, "--draft", draft_dir, "--out", out, "--max-tree-tokens", 2048,
                "--max-seq-len", 1024)
    assert r.returncode == 1 and "--max-tree-tokens 2048 exceeds --max-seq-len 1024" in r.stderr
    assert not out.exists()
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_make_export(tiny_pair, tmp_path):
    """The README's command. `-o .venv/.installed`: use the venv as it is, never reinstall in a test."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("make export needs the project's .venv")
    model_dir, draft_dir = tiny_pair
    r = subprocess.run(["make", "-s", "-o", ".venv/.installed", "export", f"MODEL={model_dir}",
                        f"DRAFT={draft_dir}", "NAME=made", f"ENGINES={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    m = verify_engine_dir(tmp_path / "made")
    # the tiny model's whole context (max_position_embeddings 4096): its KV cache is far below the cap
    assert m["name"] == "made" and m["limits"]["max_seq_len"] == 4096
    assert "max_seq_len 4096: the model's context 4096" in r.stderr


def test_make_export_without_draft(tiny_pair, tmp_path):
    """`make export MODEL=...` alone: a target-only engine."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("make export needs the project's .venv")
    r = subprocess.run(["make", "-s", "-o", ".venv/.installed", "export", f"MODEL={tiny_pair[0]}", "NAME=bare",
                        f"ENGINES={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    m = verify_engine_dir(tmp_path / "bare")
    assert m["draft"] is None and list(m["graphs"]) == ["target"] and m["defaults"]["policy"] == "ar"
    assert "no --draft: a target-only engine (policy ar)" in r.stderr
