"""`talon-rt run` / `inspect` through the installed console script (subprocess)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TALON_RT = Path(sys.executable).parent / "talon-rt"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(TALON_RT), *args], capture_output=True, text=True, timeout=timeout)


def test_console_script_installed():
    assert TALON_RT.exists(), f"{TALON_RT} missing: pip install -e ."


@pytest.mark.parametrize("args", [(), ("run",), ("inspect",)])
def test_help_everywhere(args):
    r = cli(*args, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: talon-rt"), r.stderr
    if args == ("run",):
        for flag in ("--engine", "--prompt", "--prompt-file", "--prompt-ids", "--policy", "--budget", "--mu",
                     "--root-k", "--max-new-tokens", "--temperature", "--top-p", "--top-k", "--seed",
                     "--stats", "--json"):
            assert flag in r.stdout


def test_run_json_is_one_object(tiny_engine):
    r = cli("run", "--engine", str(tiny_engine), "--prompt-ids", "1,5,9,40", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)  # the whole stdout is exactly one JSON value
    assert set(obj) == {"tokens", "text", "stop_reason", "stats"}
    assert len(obj["tokens"]) == 12 and obj["stop_reason"] == "max_new_tokens"
    for key in ("tau", "delta", "tokens_per_s", "rounds", "host_share"):
        assert key in obj["stats"]
    assert obj["stats"]["policy"] == "talon-gated"  # the manifest's default


def test_run_json_matches_api_and_policies_agree(tiny_engine):
    from talon_rt.runtime.api import Generator
    with Generator.open(tiny_engine, policy="ar") as gen:
        want = gen.generate([1, 5, 9, 40], max_new_tokens=16).tokens
    for policy in ("ar", "talon", "lookup", "talon-lookup"):
        r = cli("run", "--engine", str(tiny_engine), "--prompt-ids", "1,5,9,40", "--max-new-tokens", "16",
                "--policy", policy, "--json")
        assert json.loads(r.stdout)["tokens"] == want, policy


def test_run_streams_text_and_stats_go_to_stderr(tiny_engine, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("def fib(n):")
    r = cli("run", "--engine", str(tiny_engine), "--prompt-file", str(prompt), "--max-new-tokens", "20", "--stats")
    assert r.returncode == 0, r.stderr
    j = cli("run", "--engine", str(tiny_engine), "--prompt", "def fib(n):", "--max-new-tokens", "20", "--json")
    assert r.stdout == json.loads(j.stdout)["text"] + "\n"
    assert "tok/s" in r.stderr and "tau" in r.stderr and "us/round" in r.stderr


def test_run_with_sampling_options(tiny_engine):
    args = ("run", "--engine", str(tiny_engine), "--prompt-ids", "1,5,9", "--max-new-tokens", "10",
            "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "3", "--json")
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]  # seeded


@pytest.mark.parametrize("args, msg", [
    (("--prompt-ids", "1,x"), "--prompt-ids: expected comma-separated integers"),
    (("--prompt-ids", "1,999"), "prompt token id 999 at index 1 is outside the vocabulary"),
    (("--prompt-ids", "1", "--budget", "65"), "option budget: 65 outside [1, limits.max_tree_tokens=64]"),
    (("--prompt-ids", "1", "--mu", "0"), "option mu: 0.0 outside (0, 1]"),
    (("--prompt-ids", "1", "--temperature", "-1"), "option temperature: -1.0 < 0"),
    (("--prompt-ids", "1", "--policy", "medusa"), "invalid choice: 'medusa'"),
    (("--prompt-file", "/nonexistent/p.txt"), "--prompt-file /nonexistent/p.txt: No such file"),
])
def test_run_errors_are_one_line_exit_2(tiny_engine, args, msg):
    r = cli("run", "--engine", str(tiny_engine), *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_run_missing_engine(tmp_path):
    r = cli("run", "--engine", str(tmp_path / "none"), "--prompt", "x")
    assert r.returncode == 2 and r.stderr.strip() == f"talon-rt run: error: engine directory not found: {tmp_path / 'none'}"


def test_inspect_valid(tiny_engine):
    r = cli("inspect", str(tiny_engine))
    assert r.returncode == 0, r.stderr
    assert "max_tree_tokens 64" in r.stdout and "vocab 320" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("valid")


def test_inspect_takes_engine_like_every_subcommand(tiny_engine, tmp_path):
    a, b = cli("inspect", "--engine", str(tiny_engine)), cli("inspect", "-e", str(tiny_engine))
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout == cli("inspect", str(tiny_engine)).stdout
    r = cli("inspect")
    assert r.returncode == 2 and "the engine directory is missing (--engine DIR)" in r.stderr
    r = cli("inspect", str(tmp_path), "--engine", str(tiny_engine))
    assert r.returncode == 2 and "two engine directories given" in r.stderr


def test_version_and_short_flags(tiny_engine):
    from importlib.metadata import version
    for flag in ("--version", "-V"):
        r = cli(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"talon-rt {version('talon-rt')}"
    long = cli("run", "--engine", str(tiny_engine), "--prompt", "def f", "--max-new-tokens", "9",
               "--temperature", "0.7", "--seed", "1", "--json")
    short = cli("run", "-e", str(tiny_engine), "-p", "def f", "-n", "9", "-t", "0.7", "--seed", "1", "--json")
    assert short.returncode == 0, short.stderr
    assert json.loads(short.stdout)["tokens"] == json.loads(long.stdout)["tokens"]
    assert len(json.loads(short.stdout)["tokens"]) == 9


def test_stats_help_explains_tau_and_delta():
    text = " ".join(cli("run", "--help").stdout.split())
    assert "tau = generated tokens per target call" in text and "delta = draft calls per target call" in text


def test_default_generates_until_stop_or_full_context(tiny_engine, tmp_path):
    """max_new_tokens -1 (the exporter's default now): no count limit, the context ends the run."""
    from tests.helpers import edited_engine
    eng = edited_engine(tiny_engine, tmp_path / "e", lambda m: m["defaults"].update(max_new_tokens=-1))
    prompt = [1, 5, 9, 40]
    for args in ((), ("-n", "-1")):
        r = cli("run", "-e", str(eng), "--prompt-ids", ",".join(map(str, prompt)), "--json", *args)
        assert r.returncode == 0, r.stderr
        obj = json.loads(r.stdout)
        # the whole context (this prompt meets no stop id): prompt + generated = 256 rows + the last token
        assert obj["stop_reason"] == "context_full" and len(obj["tokens"]) == 256 - len(prompt) + 1
    r = cli("run", "-e", str(eng), "--prompt-ids", "1", "-n", "0")
    assert r.returncode == 2 and "option max_new_tokens: 0 must be >= 1, or -1" in r.stderr


def test_inspect_reports_a_bad_checksum(tiny_engine, tmp_path):
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    data = bytearray((eng / "target.onnx").read_bytes())
    data[-5] ^= 0x1
    (eng / "target.onnx").write_bytes(bytes(data))
    r = cli("inspect", str(eng))
    assert r.returncode == 2
    assert "engine      tiny" in r.stdout  # the summary still prints
    assert r.stdout.strip().splitlines()[-1].startswith("invalid") and "target.onnx: checksum mismatch" in r.stdout


def test_inspect_bad_manifest(tiny_engine, tmp_path):
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    (eng / "manifest.json").write_text("{")
    r = cli("inspect", str(eng))
    assert r.returncode == 2 and "manifest.json: invalid JSON" in r.stderr and "Traceback" not in r.stderr


def test_thread_modes_agree(tiny_engine):
    """Each threading mode in its own process (the shared pool is process-wide): same greedy output."""
    outs = {}
    for mode in ("nospin", "spin", "shared"):
        r = cli("run", "--engine", str(tiny_engine), "--prompt-ids", "1,5,9", "--max-new-tokens", "16",
                "--thread-mode", mode, "--threads", "2", "--json")
        assert r.returncode == 0, r.stderr
        outs[mode] = json.loads(r.stdout)["tokens"]
    assert outs["spin"] == outs["nospin"] == outs["shared"]


@pytest.mark.parametrize("command", ["run", "chat", "inspect", "serve", "triton-repo", "bench"])
def test_every_subcommand_takes_dash_e_for_the_engine(command):
    """`-e DIR` is `--engine DIR` everywhere, as llama.cpp's `-m` is in each of its tools."""
    from talon_rt.runtime.cli import build_parser
    extra = {"triton-repo": ["--out", "x"], "run": ["-p", "x"]}.get(command, [])
    args = build_parser().parse_args([command, "-e", "engines/some", *extra])
    assert args.engine == "engines/some"
