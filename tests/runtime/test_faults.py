"""Bad inputs and faults that once lost data, ran without bound, produced wrong output silently or
ended in a traceback; each test reproduces the original failure (the C API's cases are in
test_capi.py's ERROR_CASES)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import BusyError, EngineError, InputError, OptionError

from tests.helpers import copy_engine, edit_manifest, relist

ROOT = Path(__file__).resolve().parents[2]
TALON_RT = [sys.executable, "-m", "talon_rt.runtime.cli"]
EXPORT = [sys.executable, "-m", "talon_rt.export"]
MEMORY_CAP = 8 << 30    # address space of a child that once grew without bound: fail fast, not the machine


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _cli(cmd: list, *args, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *[str(a) for a in args]], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, preexec_fn=_capped)


def _one_line(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and text in lines[0], (r.returncode, r.stderr)


def _last_line(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    """The exporter's stderr: its progress lines, then one line for the failure."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and "Traceback" not in r.stderr and text in lines[-1], (r.returncode, r.stderr)


@pytest.fixture(scope="module")
def gen(tiny_engine):
    g = Generator.open(tiny_engine, policy="talon", budget=8)
    yield g
    g.close()


# -- 1. data loss: --force replaces only an engine directory, never an input ----------------------


@pytest.fixture()
def pair_copy(tiny_pair, tmp_path):
    model, draft = tiny_pair
    return copy_engine(model, tmp_path / "work" / "model"), copy_engine(draft, tmp_path / "work" / "draft")


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out", ["model", "work", "user"])
def test_force_never_deletes_an_input_or_a_user_folder(pair_copy, tmp_path, out):
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.export.errors import ExportError
    model, draft = pair_copy
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("irreplaceable")
    target = {"model": model, "work": tmp_path / "work", "user": user}[out]
    before = _tree(tmp_path)
    expected = {"model": "is the --model folder", "work": "contains the --model folder",
                "user": "is not an engine directory"}[out]
    with pytest.raises(ExportError, match=rf"--out .*: (exists and )?{expected}.*nothing was deleted"):
        export_engine(model, draft, target, ExportOptions(max_seq_len=64, max_tree_tokens=16,
                                                          max_prefill_chunk=16, k_max=8), force=True)
    assert _tree(tmp_path) == before


def test_force_still_replaces_an_engine_directory(tiny_engine, pair_copy, tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    out = copy_engine(tiny_engine, tmp_path / "eng")
    export_engine(*pair_copy, out, ExportOptions(max_seq_len=64, max_tree_tokens=16, max_prefill_chunk=16,
                                                 k_max=8), force=True)
    assert json.loads((out / "manifest.json").read_text())["limits"]["max_seq_len"] == 64


# -- 2. integrity: every file a graph references is listed and checksummed ------------------------


def _externalise(eng: Path, graph: str) -> str:
    """Move `graph`'s weights to an external-data file beside it; relist the graph only."""
    import onnx
    model = onnx.load(str(eng / graph))
    data = graph + ".data"
    onnx.save_model(model, str(eng / graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    relist(eng, graph)
    return data


def test_unlisted_external_data_is_refused(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    data = _externalise(eng, "draft_fc.onnx")
    with pytest.raises(EngineError, match=rf"draft_fc\.onnx: references external data '{data}', which is not "
                                          r"listed in manifest\.json files"):
        Generator.open(eng)
    r = _cli(TALON_RT, "inspect", eng)
    assert r.returncode == 2 and "invalid" in r.stdout and "references external data" in r.stdout


def test_listed_external_data_is_checksummed(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    data = _externalise(eng, "draft_fc.onnx")
    relist(eng, data)
    Generator.open(eng).close()
    raw = bytearray((eng / data).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (eng / data).write_bytes(bytes(raw))
    with pytest.raises(EngineError, match=rf"{data}: checksum mismatch"):
        Generator.open(eng)


def test_external_data_is_found_wherever_a_tensor_lives(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from talon_rt.runtime.onnx_refs import external_files
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((64, 64), np.float32)))
    graph = helper.make_graph([const, helper.make_node("MatMul", ["x", "W"], ["y0"]),
                               helper.make_node("Add", ["y0", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [w])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    assert sorted(external_files(tmp_path / "m.onnx")) == sorted(p.name for p in tmp_path.iterdir()
                                                                  if p.name != "m.onnx")
    assert len(external_files(tmp_path / "m.onnx")) == 2     # the initializer and the Constant's value


# -- hashing: once per process per file version (issue 18), changes still caught ------------------


def test_files_are_hashed_once_per_process_and_rehashed_when_changed(tiny_engine, tmp_path, monkeypatch):
    import talon_rt.runtime.digest as digest
    from talon_rt.runtime.manifest import open_manifest
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    hashed = []
    real = digest._sha256
    monkeypatch.setattr(digest, "_sha256", lambda p: hashed.append(p.name) or real(p))
    open_manifest(eng)
    first = sorted(hashed)
    assert first == sorted(json.loads((eng / "manifest.json").read_text())["files"])
    open_manifest(eng)
    assert sorted(hashed) == first                  # nothing hashed twice
    raw = bytearray((eng / "tokenizer.json").read_bytes())
    raw[-3] ^= 0x01                                 # same size, same name: a new version of the file
    (eng / "tokenizer.json").write_bytes(bytes(raw))
    with pytest.raises(EngineError, match=r"tokenizer\.json: checksum mismatch"):
        open_manifest(eng)


# -- 3. unbounded resources ----------------------------------------------------------------------


def test_threads_are_bounded_by_the_cpu_count(tiny_engine):
    r = _cli(TALON_RT, "run", "--engine", tiny_engine, "--prompt-ids", "1,2", "--threads", 100000, timeout=60)
    _one_line(r, 2, f"option threads: 100000 above this machine's {os.cpu_count()} CPUs")


def test_prompt_file_is_capped_by_the_context(tiny_engine):
    r = _cli(TALON_RT, "run", "--engine", tiny_engine, "--prompt-file", "/dev/zero", timeout=60)
    _one_line(r, 2, "--prompt-file /dev/zero: more than")
    assert "longer than the context can hold" in r.stderr


@pytest.mark.parametrize("options, name", [
    ({"policy": "chain", "chain_depth": 10**6}, "chain_depth"),
    ({"policy": "eagle3", "eagle3_top_k": 10**6}, "eagle3_top_k"),
    ({"policy": "eagle3", "eagle3_depth": 10**6}, "eagle3_depth"),
    ({"policy": "eagle3", "eagle3_top_k": 64, "eagle3_depth": 63}, r"eagle3_top_k x eagle3_depth"),
])
def test_policy_options_are_bounded_by_the_engine(tiny_engine, options, name):
    with pytest.raises(OptionError, match=rf"options? {name}: .* above .*limits\."):
        Generator.open(tiny_engine, **options)


def test_policy_option_bounds_are_named_on_the_command_line(tiny_engine):
    r = _cli(TALON_RT, "run", "--engine", tiny_engine, "--prompt-ids", "1,2", "--policy", "chain",
             "--chain-depth", 10**6)
    _one_line(r, 2, "option chain_depth: 1000000 above limits.max_tree_tokens - 1 = 63")


# -- 4. re-entrant and concurrent use of one Generator --------------------------------------------


def test_generate_from_its_own_callback_is_refused(gen):
    ref = gen.generate([5, 6, 7], max_new_tokens=12).tokens
    inner = []

    def reenter(tokens):
        try:
            gen.generate([1, 2], max_new_tokens=4)
        except BusyError as e:
            inner.append(str(e))

    assert gen.generate([5, 6, 7], max_new_tokens=12, on_tokens=reenter).tokens == ref
    assert inner and "Generator.generate: the Generator is running another generate" in inner[0]


def test_a_second_thread_is_refused_while_one_generates(gen):
    ref = gen.generate([5, 6, 7], max_new_tokens=12).tokens
    started, release, result = threading.Event(), threading.Event(), {}

    def hold(tokens):
        started.set()
        release.wait(30)

    worker = threading.Thread(target=lambda: result.setdefault(
        "tokens", gen.generate([5, 6, 7], max_new_tokens=12, on_tokens=hold).tokens))
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(BusyError, match=r"from another thread"):
            gen.generate([1, 2], max_new_tokens=4)
        with pytest.raises(BusyError, match=r"Generator\.close"):
            gen.close()
    finally:
        release.set()
        worker.join(60)
    assert result["tokens"] == ref


# -- 5. non-finite numbers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_temperature_is_refused(tiny_engine, value):
    with pytest.raises(OptionError, match=rf"option temperature: {value} is not a finite number"):
        Generator.open(tiny_engine, temperature=value)


def test_non_finite_temperature_on_the_command_line(tiny_engine):
    r = _cli(TALON_RT, "run", "--engine", tiny_engine, "--prompt-ids", "1,2", "--temperature", "nan")
    _one_line(r, 2, "option temperature: nan is not a finite number")


def test_non_finite_manifest_default_names_the_manifest(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["defaults"].__setitem__("temperature", math.nan))   # json writes NaN
    with pytest.raises(OptionError, match=r"option temperature: nan is not a finite number \(a value from "
                                          r"the defaults of .*manifest\.json\)"):
        Generator.open(eng, temperature=0.0)


def test_non_finite_export_default_is_refused():
    from talon_rt.export.build import ExportOptions
    from talon_rt.export.errors import ExportError
    with pytest.raises(ExportError, match=r"--default temperature=nan: not a finite number"):
        ExportOptions(defaults=(("temperature", math.nan),)).check()


# -- 6. interrupted and killed exports ------------------------------------------------------------

# runs `python -m talon_rt.export` in this process after making the first graph write raise a signal
_SIGNAL_DURING_EXPORT = """
import os, signal, sys
from talon_rt.export import onnx_graphs
def save(*a, **k):
    os.kill(os.getpid(), signal.{sig})
    import time; time.sleep(5)
onnx_graphs.save = save
from talon_rt.export.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_leaves_no_temp_dir_and_one_line(pair_copy, tmp_path, sig):
    out = tmp_path / "eng"
    r = _cli([sys.executable, "-c", _SIGNAL_DURING_EXPORT.format(sig=sig)], "--model", pair_copy[0],
             "--draft", pair_copy[1], "--out", out, "--max-seq-len", 64, "--max-tree-tokens", 16,
             "--max-prefill-chunk", 16, "--k-max", 8, cwd=ROOT)
    _last_line(r, 128 + getattr(signal, sig), f"python -m talon_rt.export: interrupted by {sig}")
    assert not out.exists() and not list(tmp_path.glob(".eng.*"))


def test_temp_dirs_of_killed_exports_are_removed(pair_copy, tmp_path):
    from talon_rt.export.build import ExportOptions, export_engine
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".eng.tmp-{dead.pid}-abc123"
    (stale / "target.onnx").parent.mkdir()
    (stale / "target.onnx").write_bytes(b"\0" * 1000)                 # a partial graph
    live = tmp_path / f".eng.tmp-{os.getpid()}-def456"                  # a running export's: kept
    live.mkdir()
    export_engine(*pair_copy, tmp_path / "eng", ExportOptions(max_seq_len=64, max_tree_tokens=16,
                                                              max_prefill_chunk=16, k_max=8))
    assert not stale.exists() and live.is_dir()


# -- 7. an empty text prompt is an input error, even when the tokenizer adds BOS ------------------


@pytest.fixture(scope="module")
def bos_engine(tiny_engine, tmp_path_factory):
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    eng = copy_engine(tiny_engine, tmp_path_factory.mktemp("bos") / "eng")
    tok = Tokenizer.from_file(str(eng / "tokenizer.json"))
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(eng / "tokenizer.json"))
    relist(eng, "tokenizer.json")
    assert tok.encode("").ids == [1]
    return eng


def test_empty_text_prompt_is_an_input_error(bos_engine):
    with Generator.open(bos_engine) as g:
        with pytest.raises(InputError, match=r"prompt is empty"):
            g.generate_text("")
    r = _cli(TALON_RT, "run", "--engine", bos_engine, "--prompt", "")
    _one_line(r, 2, "prompt is empty")


# -- 8. inspect runs every check open runs -------------------------------------------------------


def _symbolic_kv(eng: Path) -> None:
    import onnx
    model = onnx.load(str(eng / "target.onnx"))
    for inp in model.graph.input:
        if inp.name.startswith(("past_key", "past_value")):
            inp.type.tensor_type.shape.dim[2].dim_param = "S"
    onnx.save_model(model, str(eng / "target.onnx"))
    relist(eng, "target.onnx")


def _big_tokenizer(eng: Path) -> None:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(eng / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(8)])
    tok.save(str(eng / "tokenizer.json"))
    relist(eng, "tokenizer.json")


def _not_a_tokenizer(eng: Path) -> None:
    (eng / "tokenizer.json").write_text('{"hello": "world"}')
    relist(eng, "tokenizer.json")


@pytest.mark.parametrize("damage, message", [
    (lambda e: edit_manifest(e, lambda m: m["defaults"].__setitem__("policy", "medusa")),
     r"option policy: unknown policy 'medusa' .*\(a value from the defaults of .*manifest\.json\)"),
    (lambda e: edit_manifest(e, lambda m: m["defaults"].__setitem__("mu", 7)), r"option mu: 7.0 outside .*defaults of"),
    (lambda e: edit_manifest(e, lambda m: m["defaults"].__setitem__("budget", 65)), r"option budget: 65 outside .*defaults"),
    (lambda e: edit_manifest(e, lambda m: m["defaults"].__setitem__("temperature", -1)), r"temperature: -1.0 < 0 .*defaults"),
    (_not_a_tokenizer, r"tokenizer\.json: not a Hugging Face tokenizers file"),
    (_big_tokenizer, r"tokenizer\.json: the tokenizer has 328 tokens, more than model\.vocab_size=320"),
    (_symbolic_kv, r"target\.onnx: input 'past_key_0' dim 2 is symbolic \('S'\), the manifest fixes it at 256"),
])
def test_inspect_and_open_agree(tiny_engine, tmp_path, damage, message):
    import re
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    damage(eng)
    r = _cli(TALON_RT, "inspect", eng)
    assert r.returncode == 2 and re.search(rf"^invalid +.*{message}", r.stdout, re.M), r.stdout + r.stderr
    with pytest.raises((EngineError, OptionError), match=message):
        Generator.open(eng)


def test_kv_cache_beyond_memory_is_refused(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["limits"].__setitem__("max_seq_len", 10**12))
    with pytest.raises(EngineError, match=r"limits\.max_seq_len=1000000000000 needs .* GiB of KV cache, more "
                                          r"than this machine's"):
        Generator.open(eng)


# -- 9. one-line errors, not tracebacks ----------------------------------------------------------


def test_deeply_nested_manifest(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(EngineError, match=r"manifest\.json: invalid JSON: nested too deeply"):
        Generator.open(eng)
    r = _cli(TALON_RT, "run", "--engine", eng, "--prompt-ids", "1")
    _one_line(r, 2, "nested too deeply")


def test_deeply_nested_checkpoint_config(pair_copy):
    from talon_rt.export.checkpoints import read_config
    from talon_rt.export.errors import CheckpointError
    (pair_copy[0] / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON \(nested too deeply\)"):
        read_config(pair_copy[0])


def test_export_out_dot_with_force(pair_copy, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    r = _cli(EXPORT, "--model", pair_copy[0], "--draft", pair_copy[1], "--out", ".", "--force", cwd=cwd)
    _one_line(r, 1, "export failed: --out .: exists and is not an engine directory")
    assert [p.name for p in cwd.iterdir()] == ["notes.txt"] and (cwd / "notes.txt").read_text() == "mine"


def test_export_out_under_a_regular_file(pair_copy, tmp_path):
    (tmp_path / "file").write_text("x")
    r = _cli(EXPORT, "--model", pair_copy[0], "--draft", pair_copy[1], "--out", tmp_path / "file" / "eng")
    _one_line(r, 1, f"--out {tmp_path / 'file' / 'eng'}: {tmp_path / 'file'} is not a directory")


def test_export_max_seq_len_bounded_by_memory(pair_copy, tmp_path):
    r = _cli(EXPORT, "--model", pair_copy[0], "--draft", pair_copy[1], "--out", tmp_path / "eng",
             "--max-seq-len", 10**9)
    _last_line(r, 1, "--max-seq-len 1000000000 needs")
    assert "GiB of KV cache, more than this machine's" in r.stderr
    assert not list(tmp_path.glob(".eng.*"))


def test_sigint_during_imports_is_one_line(pair_copy, tmp_path):
    proc = subprocess.Popen([*EXPORT, "--model", pair_copy[0], "--draft", pair_copy[1], "--out", tmp_path / "eng"],
                            stderr=subprocess.PIPE, text=True, preexec_fn=_capped)
    time.sleep(0.5)      # torch takes seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == [
        "python -m talon_rt.export: interrupted by SIGINT; no engine directory written"], err


# -- 10. the Python API's own errors for loose types ---------------------------------------------


@pytest.mark.parametrize("call, error, message", [
    (lambda g: g.generate("123"), InputError, r"prompt_ids must be a sequence of integers .*got str .*generate_text"),
    (lambda g: g.generate([1.9, 2.7]), InputError, r"prompt_ids must be .*1\.9 at index 0 is a float"),
    (lambda g: g.generate([float("inf")]), InputError, r"prompt_ids must be .*inf at index 0 is a float"),
    (lambda g: g.generate([True, 2]), InputError, r"True at index 0 is a bool"),
    (lambda g: g.decode([99999]), InputError, r"decode token id 99999 at index 0 is outside the vocabulary"),
    (lambda g: g.decode([-1]), InputError, r"decode token id -1 at index 0 is outside the vocabulary"),
    (lambda g: g.decode("ab"), InputError, r"ids must be a sequence of integers"),
    (lambda g: g.encode(None), InputError, r"text must be a str, got NoneType"),
    (lambda g: g.generate([1, 2], on_tokens=3), InputError, r"on_tokens must be callable"),
])
def test_loose_types_get_the_apis_errors(gen, call, error, message):
    with pytest.raises(error, match=message):
        call(gen)
    assert gen.generate([5, 6], max_new_tokens=2).tokens     # still usable


@pytest.mark.parametrize("path", [None, 3, b"\xff"])
def test_open_with_a_non_path(path):
    with pytest.raises(EngineError, match=r"engine directory: expected a path"):
        Generator.open(path)


# -- 11. weight_map shards stay inside the checkpoint folder ---------------------------------------


@pytest.mark.parametrize("shard", ["../outside.safetensors", "{abs}"])
def test_weight_map_shard_outside_the_folder(pair_copy, shard):
    from talon_rt.export.checkpoints import read_weights
    from talon_rt.export.errors import CheckpointError
    model = pair_copy[0]
    outside = model.parent / "outside.safetensors"
    (model / "model.safetensors").rename(outside)
    shard = shard.format(abs=outside)
    from safetensors import safe_open
    with safe_open(str(outside), "pt") as f:
        keys = list(f.keys())
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
    with pytest.raises(CheckpointError, match=r"weight_map shard .*outside"):
        read_weights(model)
