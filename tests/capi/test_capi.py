"""C API (runtime/capi): `make capi`, then C hosts compiled with cc, checked against the CLI and the
Python API on the tiny engine. tests/capi/test_capi_host.c is the test host; examples/ are the shipped ones."""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAPI = ROOT / "runtime" / "capi"
CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
PROMPT = "1,5,9,42,17"
PROMPT_IDS = [1, 5, 9, 42, 17]
OPTIONS = {"policy": "talon", "budget": 8}

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) found: the C API "
                                                   "tests compile libtalon_rt.so and C hosts")


def host_env() -> dict[str, str]:
    """The environment of a C host: the library's built-in venv and root, nothing inherited."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TALON_RT_") and k != "PYTHONPATH"}


def run(args, check=True, timeout=60) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=host_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def compile_host(source: Path, exe: Path, lib_dir: Path) -> Path:
    run([CC, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O1", f"-I{CAPI}", source,
         f"-L{lib_dir}", "-ltalon_rt", f"-Wl,-rpath,{lib_dir}", "-lpthread", "-o", exe])
    return exe


@pytest.fixture(scope="session")
def capi(tmp_path_factory):
    """Build libtalon_rt.so with `make capi` (into a temp dir) and the C hosts against it."""
    out = tmp_path_factory.mktemp("capi")
    venv = Path(sys.prefix)
    # -o: the venv is this test run's own; never let make reinstall it
    run(["make", "-C", ROOT, "-o", venv / ".installed", "capi", f"VENV={venv}", f"CAPI_OUT={out}", f"CC={CC}"])
    assert (out / "libtalon_rt.so").is_file()
    return {"lib": out / "libtalon_rt.so",
            "generate": compile_host(CAPI / "examples" / "generate.c", out / "generate", out),
            "host": compile_host(ROOT / "tests" / "capi" / "test_capi_host.c", out / "test_capi_host", out)}


@pytest.fixture(scope="session")
def other_engine(tmp_path_factory):
    """A second tiny engine with other weights (seed 1), for the two-handle test."""
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.export.tiny import make_tiny_pair
    model_dir, draft_dir = make_tiny_pair(tmp_path_factory.mktemp("tiny_pair_1"), arch="llama", seed=1)
    out = tmp_path_factory.mktemp("tiny_engine_1") / "tiny1"
    opts = ExportOptions(dtype="float32", max_seq_len=256, max_tree_tokens=64, max_prefill_chunk=128, k_max=32)
    return export_engine(model_dir, draft_dir, out, opts, name="tiny1")


def parse_generate(stdout: str) -> dict:
    """tokens / text / stats / rounds of examples/generate.c's output."""
    lines = stdout.splitlines()
    tokens = next(line for line in lines if line.startswith("tokens:"))
    stats = next(line for line in lines if line.startswith("stats: "))
    return {"tokens": [int(t) for t in tokens[len("tokens:"):].split()],
            "text": stdout[stdout.index("\ntext: ") + len("\ntext: "):stdout.rindex("\nstats: ")],
            "stats": {k: float(v) for k, v in (kv.split("=") for kv in stats[len("stats: "):].split())},
            "rounds": [[int(t) for t in line[len("round:"):].split()] for line in lines if line.startswith("round:")]}


def talon_rt_cli(*args) -> dict:
    exe = Path(sys.executable).parent / "talon-rt"
    proc = subprocess.run([str(exe), *map(str, args), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---- generation through the example host --------------------------------------------------------

@pytest.mark.parametrize("options", [OPTIONS, {"policy": "chain", "chain_depth": 3},
                                     {"policy": "eagle3", "temperature": 0.9, "top_p": 0.9, "seed": 7},
                                     {"policy": "talon-lookup", "budget": 6}, {"policy": "lookup", "budget": 6}],
                         ids=["talon-greedy", "chain-greedy", "eagle3-sampled", "talon-lookup-greedy",
                              "lookup-greedy"])
def test_example_host_ids_match_cli(capi, tiny_engine, options):
    c = parse_generate(run([capi["generate"], "--ids", "--options", json.dumps(options), tiny_engine, PROMPT,
                            24]).stdout)
    flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", v)]
    cli = talon_rt_cli("run", "--engine", tiny_engine, "--prompt-ids", PROMPT, *flags, "--max-new-tokens", 24)
    assert c["tokens"] == cli["tokens"]
    assert len(c["tokens"]) == c["stats"]["n_tokens"]
    assert c["stats"]["rounds"] == cli["stats"]["rounds"]
    assert c["stats"]["tau"] == pytest.approx(cli["stats"]["tau"], abs=1e-3)
    assert c["stats"]["delta"] == pytest.approx(cli["stats"]["delta"], abs=1e-3)


def test_target_only_engine_through_the_c_api(capi, tiny_target_engine):
    c = parse_generate(run([capi["generate"], "--ids", tiny_target_engine, PROMPT, 16]).stdout)
    cli = talon_rt_cli("run", "--engine", tiny_target_engine, "--prompt-ids", PROMPT, "--max-new-tokens", 16)
    assert c["tokens"] == cli["tokens"] and len(c["tokens"]) == 16
    bad = run([capi["generate"], "--ids", "--options", json.dumps({"policy": "talon"}), tiny_target_engine, PROMPT,
               4], check=False)
    assert bad.returncode != 0
    assert "TALON_RT_E_OPTION" in bad.stderr and "'talon' drafts with an EAGLE-3 head" in bad.stderr, bad.stderr


def test_example_host_text_matches_cli(capi, tiny_engine):
    c = parse_generate(run([capi["generate"], tiny_engine, "def fib(n):", 16]).stdout)
    cli = talon_rt_cli("run", "--engine", tiny_engine, "--prompt", "def fib(n):", "--max-new-tokens", 16)
    assert c["tokens"] == cli["tokens"]
    assert c["text"] == cli["text"]


def test_stream_delivers_the_same_tokens(capi, tiny_engine):
    whole = parse_generate(run([capi["generate"], "--ids", tiny_engine, PROMPT, 20]).stdout)
    streamed = parse_generate(run([capi["generate"], "--ids", "--stream", tiny_engine, PROMPT, 20]).stdout)
    assert [t for r in streamed["rounds"] for t in r] == streamed["tokens"] == whole["tokens"]
    assert len(streamed["rounds"]) >= 2


def test_matches_python_api(capi, tiny_engine):
    from talon_rt.runtime.api import Generator
    c = parse_generate(run([capi["generate"], "--ids", "--options", json.dumps(OPTIONS), tiny_engine, PROMPT,
                            24]).stdout)
    with Generator.open(tiny_engine, **OPTIONS) as gen:
        res = gen.generate(PROMPT_IDS, max_new_tokens=24)
    assert c["tokens"] == res.tokens
    assert c["stats"]["stop_reason"] == {"eos": 1, "max_new_tokens": 2, "context_full": 3}[res.stop_reason]


def test_runtime_import_failure_is_a_code(capi, tiny_engine, tmp_path):
    # no venv (so no editable install of talon-rt) and an empty root: `runtime` cannot be imported
    env = {**host_env(), "TALON_RT_PYTHON": "/nonexistent/bin/python", "TALON_RT_ROOT": str(tmp_path)}
    proc = subprocess.run([str(capi["generate"]), "--ids", str(tiny_engine), PROMPT, "4"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert re.search(r"^open: TALON_RT_E_INIT: talon_rt: cannot import the runtime .*ModuleNotFoundError",
                     proc.stderr, re.M), proc.stderr


# ---- error paths ---------------------------------------------------------------------------------

ERROR_CASES = {  # case: (status, message regex)
    "bad_engine": ("TALON_RT_E_ENGINE", r"does-not-exist"),
    "bad_option": ("TALON_RT_E_OPTION", r"policy.*no-such-policy"),
    "budget_too_big": ("TALON_RT_E_OPTION", r"budget.*100000.*max_tree_tokens"),
    "bad_json": ("TALON_RT_E_OPTION", r"options_json: invalid JSON"),
    "json_not_object": ("TALON_RT_E_OPTION", r"options_json: expected a JSON object, got list"),
    "open_null_dir": ("TALON_RT_E_ARG", r"talon_rt_open: engine_dir is NULL"),
    # issue 15: a path that is not UTF-8 is named (its bytes escaped), not "(no message)"
    "open_not_utf8_path": ("TALON_RT_E_ENGINE", r"engine directory not found: /nonexistent/\\xff\\xfe-engine"),
    "threads_too_many": ("TALON_RT_E_OPTION", r"option threads: 100000 above this machine's \d+ CPUs"),
    "temperature_nan": ("TALON_RT_E_OPTION", r"option temperature: nan is not a finite number"),
    "eagle3_top_k_huge": ("TALON_RT_E_OPTION", r"option eagle3_top_k: 1000000 above the largest call"),
    "open": ("TALON_RT_OK", r""),
    "buffer_too_small": ("TALON_RT_E_BUFFER", r"out_capacity 2 is too small for the 8 generated tokens"),
    "last_tokens_after_small_buffer": ("TALON_RT_OK", r"prefix matches"),
    "last_tokens_small_buffer": ("TALON_RT_E_BUFFER", r"out_capacity 1 is too small for 8 tokens"),
    "size_query": ("TALON_RT_E_BUFFER", r"out_capacity 0 is too small"),
    "empty_prompt": ("TALON_RT_E_INPUT", r"prompt is empty"),
    "token_out_of_range": ("TALON_RT_E_INPUT", r"1073741824"),
    "null_n_out": ("TALON_RT_E_ARG", r"n_out is NULL"),
    "text_not_utf8": ("TALON_RT_E_INPUT", r"prompt: not valid UTF-8"),
    "text_empty": ("TALON_RT_E_INPUT", r"prompt is empty"),
    "decode_out_of_range": ("TALON_RT_E_INPUT", r"decode token id 99999 at index 1 is outside the vocabulary"),
    "stream_cancel": ("TALON_RT_E_CANCELLED", r"stopped by the stream callback \(it returned 1\)"),
    "reentrant_outer": ("TALON_RT_OK", r""),
    "reentrant_inner": ("TALON_RT_E_BUSY", r"talon_rt_generate_ids: the handle is serving another call"),
    "still_works": ("TALON_RT_OK", r""),
    "close": ("TALON_RT_OK", r""),
    "double_close": ("TALON_RT_E_HANDLE", r"^talon_rt_close: the handle was closed by talon_rt_close$"),
    "use_after_close": ("TALON_RT_E_HANDLE", r"^talon_rt_generate_ids: the handle was closed"),
    "last_error_closed": ("TALON_RT_OK", r"^the handle was closed by talon_rt_close$"),
    "stats_after_close": ("TALON_RT_E_HANDLE", r"^talon_rt_last_stats: the handle was closed"),
    "unknown_handle": ("TALON_RT_E_HANDLE", r"not a handle returned by talon_rt_open"),
    "null_handle": ("TALON_RT_E_HANDLE", r"the handle is NULL"),
    "close_null": ("TALON_RT_OK", r""),
    "reopen_generate": ("TALON_RT_OK", r""),
    "reopen_is_new_address": ("TALON_RT_OK", r""),
}


def test_error_paths_codes_messages_and_host_alive(capi, tiny_engine):
    proc = run([capi["host"], "errors", tiny_engine])
    cases = {}
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"case=(\S+) status=(\S+) n=(\d+) msg=(.*)", line)
        if m:
            cases[m[1]] = (m[2], int(m[3]), m[4])
    assert proc.stdout.splitlines()[-1] == "alive"  # every failure returned; the host went on
    assert set(cases) == set(ERROR_CASES)
    for name, (status, pattern) in ERROR_CASES.items():
        assert cases[name][0] == status, (name, cases[name])
        assert re.search(pattern, cases[name][2]), (name, cases[name])
    for name in ("bad_engine", "bad_option", "budget_too_big", "bad_json", "open_null_dir", "open_not_utf8_path",
                 "threads_too_many", "temperature_nan", "eagle3_top_k_huge", "decode_out_of_range"):
        assert cases[name][1] == 1, f"{name}: *out must be NULL after a failed open"
    for name in ("buffer_too_small", "size_query", "last_tokens_small_buffer", "last_tokens_after_small_buffer"):
        assert cases[name][1] == 8, f"{name}: *n_out must report the size needed"
    assert cases["empty_prompt"][1] == 0 and cases["token_out_of_range"][1] == 0
    assert cases["stream_cancel"][1] >= 1
    assert cases["reopen_generate"][1] == 4 and cases["reopen_is_new_address"][1] == 1


# ---- several handles, threads ----------------------------------------------------------------------

def test_two_handles_on_two_engines_match_separate_runs(capi, tiny_engine, other_engine):
    lines = dict(line.split(":", 1) for line in run([capi["host"], "two", tiny_engine, other_engine, PROMPT,
                                                     16]).stdout.splitlines())
    both = {k: [int(t) for t in v.split()] for k, v in lines.items()}
    alone_a = parse_generate(run([capi["generate"], "--ids", tiny_engine, PROMPT, 16]).stdout)["tokens"]
    alone_b = parse_generate(run([capi["generate"], "--ids", other_engine, PROMPT, 16]).stdout)["tokens"]
    assert both["a1"] == both["a2"] == both["a3"] == alone_a
    assert both["b1"] == both["b2"] == both["b3"] == alone_b
    assert alone_a != alone_b  # the engines differ, so a mix-up would show


def test_threads(capi, tiny_engine):
    """Python starts on a thread that exits; the handle is then used from main and a third thread;
    two handles generate at the same time."""
    out = dict(line.split(":", 1) for line in run([capi["host"], "thread", tiny_engine, PROMPT, 12]).stdout.splitlines())
    assert set(out) == {"t1", "main", "t2", "c1", "c2"}
    assert len(set(out.values())) == 1 and out["main"].split()


# ---- a host that already runs Python (this process, through ctypes) --------------------------------

class Stats(ctypes.Structure):
    _fields_ = [("n_tokens", ctypes.c_size_t), ("stop_reason", ctypes.c_int), ("tau", ctypes.c_double),
                ("delta", ctypes.c_double), ("tokens_per_s", ctypes.c_double), ("rounds", ctypes.c_uint64),
                ("draft_calls", ctypes.c_uint64), ("target_calls", ctypes.c_uint64),
                ("engine_s", ctypes.c_double), ("host_s", ctypes.c_double), ("host_share", ctypes.c_double),
                ("call_s", ctypes.c_double)]


@pytest.fixture(scope="session")
def lib(capi):
    lib = ctypes.CDLL(str(capi["lib"]))  # CDLL releases the GIL around each call, as a C host would hold none
    lib.talon_rt_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.talon_rt_generate_ids.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                          ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                          ctypes.POINTER(ctypes.c_size_t)]
    lib.talon_rt_last_stats.argtypes = [ctypes.c_void_p, ctypes.POINTER(Stats)]
    lib.talon_rt_last_error.argtypes = [ctypes.c_void_p]
    lib.talon_rt_last_error.restype = ctypes.c_char_p
    lib.talon_rt_close.argtypes = [ctypes.c_void_p]
    lib.talon_rt_status_name.restype = ctypes.c_char_p
    return lib


def c_generate(lib, rt, ids, max_new):
    prompt = (ctypes.c_int32 * len(ids))(*ids)
    out, n = (ctypes.c_int32 * 256)(), ctypes.c_size_t()
    status = lib.talon_rt_generate_ids(rt, prompt, len(ids), max_new, out, 256, ctypes.byref(n))
    return status, list(out[:n.value])


def test_in_process_host_and_python_exceptions(lib, tiny_engine, monkeypatch):
    """The host's interpreter is used as is; exceptions that would end a Python program (SystemExit)
    or that are internal errors become TALON_RT_E_PYTHON, and the host carries on."""
    import talon_rt.runtime.api
    rt = ctypes.c_void_p()
    assert lib.talon_rt_open(str(tiny_engine).encode(), json.dumps(OPTIONS).encode(), ctypes.byref(rt)) == 0
    status, tokens = c_generate(lib, rt, PROMPT_IDS, 12)
    with talon_rt.runtime.api.Generator.open(tiny_engine, **OPTIONS) as gen:
        assert status == 0 and tokens == gen.generate(PROMPT_IDS, max_new_tokens=12).tokens
    stats = Stats()
    assert lib.talon_rt_last_stats(rt, ctypes.byref(stats)) == 0
    assert stats.n_tokens == len(tokens) and stats.stop_reason in (1, 2) and stats.rounds >= 1 and stats.tau > 0
    assert stats.target_calls >= stats.rounds and stats.call_s > 0

    def exits(*args, **kwargs):
        raise SystemExit(3)

    def breaks(*args, **kwargs):
        raise RuntimeError("boom in the decode loop")

    monkeypatch.setattr(talon_rt.runtime.api.Generator, "generate", exits)
    assert c_generate(lib, rt, PROMPT_IDS, 4)[0] == 10  # TALON_RT_E_PYTHON
    assert b"SystemExit" in lib.talon_rt_last_error(rt)
    monkeypatch.setattr(talon_rt.runtime.api.Generator, "generate", breaks)
    assert c_generate(lib, rt, PROMPT_IDS, 4)[0] == 10
    msg = lib.talon_rt_last_error(rt).decode()
    assert re.search(r"internal error: RuntimeError: boom in the decode loop \(at .*test_capi\.py:\d+ in breaks\)", msg)
    assert lib.talon_rt_last_stats(rt, ctypes.byref(stats)) == 0 and stats.n_tokens == 0
    monkeypatch.undo()
    assert c_generate(lib, rt, PROMPT_IDS, 12) == (0, tokens)
    assert lib.talon_rt_close(rt) == 0
    assert lib.talon_rt_close(rt) == 5  # TALON_RT_E_HANDLE


def test_status_codes_agree_with_header_and_bridge(lib):
    from talon_rt.runtime.capi import bridge
    header = (CAPI / "talon_rt.h").read_text()
    codes = {name: int(v) for name, v in re.findall(r"^\s+(TALON_RT_(?:OK|E_\w+)) = (\d+)", header, re.M)}
    assert len(codes) == 12 and sorted(codes.values()) == list(range(12))
    for name, value in codes.items():
        assert lib.talon_rt_status_name(value).decode() == name
        assert getattr(bridge, name.removeprefix("TALON_RT_")) == value
    assert lib.talon_rt_status_name(99) == b"TALON_RT_E_UNKNOWN"


# ---- the overhead script -------------------------------------------------------------------------

def test_overhead_script_runs(capi, tiny_engine):
    proc = subprocess.run([sys.executable, "-m", "talon_rt.runtime.capi.overhead", "--engine", str(tiny_engine),
                           "--calls", "4", "--blocks", "2", "--lib-dir", str(capi["lib"].parent), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    medians = json.loads(proc.stdout)["medians"]
    assert set(medians) == {"generate_1_token", "encode"}
    assert all(r["c_us"] > 0 and r["python_us"] > 0 for r in medians.values())


def test_render_chat_then_generate_text_equals_python_chat(lib, tmp_path_factory, tiny_engine):
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.export.tiny import CHATML, make_tiny_pair
    model_dir, draft_dir = make_tiny_pair(tmp_path_factory.mktemp("chat_pair"), seed=2, chat=True)
    engine = export_engine(model_dir, draft_dir, tmp_path_factory.mktemp("chat") / "chat",
                           ExportOptions(max_seq_len=256, max_tree_tokens=16, max_prefill_chunk=64, k_max=8))
    lib.talon_rt_render_chat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.talon_rt_generate_text.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                           ctypes.POINTER(ctypes.c_void_p)]
    lib.talon_rt_free.argtypes = [ctypes.c_void_p]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def fib(n):"}]
    rt, text, reply = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.talon_rt_open(str(engine).encode(), json.dumps(OPTIONS).encode(), ctypes.byref(rt)) == 0
    try:
        assert lib.talon_rt_render_chat(rt, json.dumps(messages).encode(), ctypes.byref(text)) == 0
        rendered = ctypes.string_at(text.value).decode()
        assert lib.talon_rt_generate_text(rt, rendered.encode(), 16, ctypes.byref(reply)) == 0
        from talon_rt.runtime.api import Generator
        from talon_rt.runtime.chat import render_chat
        with Generator.open(engine, **OPTIONS) as gen:
            assert rendered == gen.render_chat(messages) == render_chat(CHATML, messages)
            assert ctypes.string_at(reply.value).decode() == gen.chat(messages, max_new_tokens=16).text
        lib.talon_rt_free(text), lib.talon_rt_free(reply)
        for bad, match in ((b"not json", "invalid JSON"), (b'[{"role": "robot", "content": "x"}]', "role"),
                           (b"\xff\xfe", "not valid UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
                           (b'[{"role": "user", "content": "\\ud800"}]', "lone surrogate"),
                           (b'[{"role": "user", "content": "a\\u0000b"}]', "contains a NUL character")):
            assert lib.talon_rt_render_chat(rt, bad, ctypes.byref(text)) == 3 and text.value is None  # E_INPUT
            assert match in lib.talon_rt_last_error(rt).decode()
    finally:
        lib.talon_rt_close(rt)
    rt = ctypes.c_void_p()
    assert lib.talon_rt_open(str(tiny_engine).encode(), None, ctypes.byref(rt)) == 0
    assert lib.talon_rt_render_chat(rt, json.dumps(messages).encode(), ctypes.byref(text)) == 3
    assert "no chat template" in lib.talon_rt_last_error(rt).decode()
    lib.talon_rt_close(rt)
