"""The GPU install path and `make gpu-check` on a machine without a GPU (the CPU suite's view of them)."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from talon_rt.runtime.backends import cuda_rt
from talon_rt.runtime.backends.ort import ort_gpu_conflict

ROOT = Path(__file__).resolve().parents[2]


def test_install_gpu_keeps_onnxruntime_gpu_alone():
    r = subprocess.run(["make", "-n", "install-gpu", "-o", ".venv/.installed"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    uninstall = next(i for i, line in enumerate(lines) if "pip uninstall" in line)
    install = next(i for i, line in enumerate(lines) if "pip install" in line and "onnxruntime-gpu" in line)
    assert "onnxruntime onnxruntime-gpu" in lines[uninstall] and uninstall < install
    assert "CUDAExecutionProvider" in r.stdout   # the install checks the provider it promised


def test_gpu_extra_does_not_pull_onnxruntime_gpu():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["gpu"] if d.startswith("onnxruntime")]


def test_both_onnxruntime_packages_are_named(monkeypatch):
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(metadata, "version", lambda dist: versions[dist])
    assert ort_gpu_conflict() == ("; both onnxruntime==1.32.0 and onnxruntime-gpu==1.31.1 are installed and "
                                  "overwrite each other (run `make install-gpu`, see docs/gpu.md)")
    del versions["onnxruntime-gpu"]

    def version(dist):
        if dist not in versions:
            raise metadata.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(metadata, "version", version)
    assert ort_gpu_conflict() == ""


def test_gpu_check_without_a_gpu_says_not_run(tmp_path):
    if cuda_rt.device_count() > 0:
        pytest.skip("a GPU is present: `make gpu-check` runs the real check there")
    r = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "ort-cuda: NOT RUN (no CUDA device" in r.stdout and "tensorrt: NOT RUN (no CUDA device" in r.stdout
    verdict = json.loads((tmp_path / "verdict.json").read_text())["verdict"]
    assert set(verdict) == {"ort-cuda", "tensorrt"}
