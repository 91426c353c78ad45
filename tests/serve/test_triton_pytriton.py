"""The talon model on a real Triton Inference Server, through PyTriton on loopback (a slow mark: `make
test-slow`; ~2 min, more when .venv-pytriton has to be created by `make pytriton`). A gRPC client receives
the tokens incrementally (several responses, spread in time) and they equal `talon-rt run`'s."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-pytriton"
DEMO = ROOT / "models" / "stdlib-pair"
PROMPT, NEW = "def fib(n):", 64


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_a_stream_through_pytriton_equals_talon_rt_run(tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    subprocess.run(["make", "-s", "pytriton"], cwd=ROOT, check=True, timeout=1200)
    engine = export_engine(DEMO / "target", DEMO / "eagle3", tmp_path / "demo",
                           ExportOptions(flavour="gqa", draft_weights="int4"), name="demo")
    threads = str(os.cpu_count() or 1)           # what pytriton_serve gives its one instance
    ref = json.loads(subprocess.run(
        [sys.executable, "-m", "talon_rt.runtime.cli", "run", "--engine", str(engine), "--prompt", PROMPT,
         "--max-new-tokens", str(NEW), "--threads", threads, "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300).stdout)

    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")}   # PyTriton needs libpython
    python = str(VENV / "bin" / "python")
    server = subprocess.Popen([python, "-m", "talon_rt.runtime.triton.pytriton_serve", "--engine", str(engine),
                               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while not line.startswith("ready") and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
        assert line.startswith("ready"), f"PyTriton did not start (exit {server.poll()})"
        out = subprocess.run([python, "-m", "talon_rt.runtime.triton.client", "--url", f"grpc://127.0.0.1:{grpc}",
                              "--prompt", PROMPT, "--max-tokens", str(NEW)],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=300).stdout
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    pieces = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len(pieces) > 3 and pieces[-1]["t"] > pieces[0]["t"]      # several responses, one per round
    assert [t for p in pieces for t in p["tokens"]] == ref["tokens"]
    assert "".join(p["text"] for p in pieces) == ref["text"]
