"""One virtualenv per peer family, built once under the peers' cache and reused.

A peer's libraries (torch, onnxruntime-genai, a llama.cpp build) never meet talon-rt's, nor each
other's: each family's worker runs in its own environment's Python. An environment is keyed by
its requirements, so a version bump builds a new one beside the old; it is marked ready only after
every install succeeded. llama-cpp-python is built from its sdist (a CPU build, nice'd, 2 jobs) into
a wheel kept in the cache, with its unpacked sources and build folder (an interrupted build resumes;
llama.cpp's example programs, `llama-speculative-simple` among them, are built there too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from talon_rt.runtime.bench.peers.unavailable import PeerUnavailable

TORCH = "torch==2.13.0"  # as pyproject's export extra: the CPU wheel this machine carries
TRANSFORMERS = "transformers==5.24.0"  # what the export extra resolves to here; onnxruntime-genai's builder runs on it
LLAMA_CPP_PYTHON = "0.3.36"
# a CPU build for this machine; examples on: llama.cpp's EAGLE-3 runs only in its own programs
# (llama-speculative-simple, docs/bench.md), the rest off
LLAMA_CPP_CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF "
                        "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF "
                        "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF")
LLAMA_CPP_BUILD_JOBS = 2


@dataclass(frozen=True)
class PeerEnv:
    name: str
    requirements: tuple[str, ...]
    llama_cpp_wheel: bool = False  # also build llama-cpp-python from its sdist and install the wheel


ENVS = {
    "hf": PeerEnv("hf", ("numpy", TORCH, TRANSFORMERS, "safetensors")),
    "ortgenai": PeerEnv("ortgenai", ("numpy", "onnxruntime-genai==0.18.0", "onnx", "onnx-ir", TORCH, TRANSFORMERS,
                                     "safetensors")),
    "llamacpp": PeerEnv("llamacpp", ("numpy", "typing-extensions", "diskcache", "jinja2"), llama_cpp_wheel=True),
}


def env_key(env: PeerEnv) -> str:
    spec = {"requirements": env.requirements, "python": list(sys.version_info[:2])}
    if env.llama_cpp_wheel:
        spec["llama_cpp"] = [LLAMA_CPP_PYTHON, LLAMA_CPP_CMAKE_ARGS]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def env_dir(env: PeerEnv, cache: Path) -> Path:
    return cache / "envs" / f"{env.name}-{env_key(env)}"


def python_of(root: Path) -> Path:
    return root / "bin" / "python"


def llama_cpp_dir(cache: Path) -> Path:
    """The llama-cpp-python wheel (wheels/) and its kept CMake build folder (build/)."""
    return cache / f"llamacpp-{LLAMA_CPP_PYTHON}"


def _run(cmd: Sequence[str], log: Path, env: dict | None = None) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"`{' '.join(cmd[:6])} ...` exited with {proc.returncode} (log {log}): {tail[0][:160]}")


def _llama_cpp_wheel(python: Path, cache: Path, log: Path) -> Path:
    """Build llama-cpp-python's wheel from its sdist, unpacked once into the cache: the source path
    stays the same, so an interrupted build resumes in the kept build folder. A wheel built with
    other CMake flags (build-flags.txt) is rebuilt."""
    root = llama_cpp_dir(cache)
    wheels, stamp = root / "wheels", root / "build-flags.txt"
    pattern = f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl"
    if stamp.is_file() and stamp.read_text() == LLAMA_CPP_CMAKE_ARGS and sorted(wheels.glob(pattern)):
        return sorted(wheels.glob(pattern))[-1]
    shutil.rmtree(wheels, ignore_errors=True)
    if stamp.is_file() and stamp.read_text() != LLAMA_CPP_CMAKE_ARGS:  # the kept CMake cache would keep them
        shutil.rmtree(root / "build", ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)
    src = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not (src / "pyproject.toml").is_file():
        _run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(root),
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], log)
        with tarfile.open(root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as tar:
            tar.extractall(root, filter="data")
    stamp.write_text(LLAMA_CPP_CMAKE_ARGS)
    env = dict(os.environ, CMAKE_ARGS=LLAMA_CPP_CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(LLAMA_CPP_BUILD_JOBS))
    _run(["nice", "-n", "19", str(python), "-m", "pip", "wheel", "--no-deps", str(src), "-w", str(wheels),
          "-C", f"build-dir={root / 'build'}"], log, env)
    found = sorted(wheels.glob(pattern))
    if not found:
        raise PeerUnavailable(f"no llama-cpp-python wheel in {wheels} after its build (log {log})")
    return found[-1]


def ensure_env(family: str, cache: Path) -> Path:
    """The Python of `family`'s virtualenv under `cache`, created and installed on first use."""
    env = ENVS.get(family)
    if env is None:
        raise PeerUnavailable(f"no virtualenv recipe for peer family {family!r} (known: {', '.join(ENVS)})")
    root = env_dir(env, cache)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benches building one env wait for each other
        return _build(env, root, cache)


def _build(env: PeerEnv, root: Path, cache: Path) -> Path:
    python = python_of(root)
    if (root / ".ready").is_file():
        return python
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log = root / "build.log"
    _run([sys.executable, "-m", "venv", str(root)], log)
    _run([str(python), "-m", "pip", "install", "-q", *env.requirements], log)
    if env.llama_cpp_wheel:
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(_llama_cpp_wheel(python, cache, log))], log)
    (root / ".ready").write_text(json.dumps({"requirements": env.requirements, "key": env_key(env)}) + "\n")
    return python
