"""Peers without their libraries: the job each worker gets, the virtualenv each family runs in, the
llama.cpp generation loop on a fake model, and the agreement with talon-rt's `ar`. Milliseconds;
no llama.cpp build, no onnxruntime-genai export, no 93 MB wheel."""

import argparse
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from talon_rt.runtime.bench import cli as bench_cli
from talon_rt.runtime.bench import peers as peers_mod
from talon_rt.runtime.bench.peers import PEERS, PeerPrompt, PeerSpec, PeerUnavailable, envs, run_peers
from talon_rt.runtime.bench.peers.agreement import agreement, first_divergence, label
from talon_rt.runtime.bench.peers.llamacpp import generate_ids
from talon_rt.runtime.bench.peers.worker import run_job
from talon_rt.runtime.bench.report import peers_table

PROMPTS = [PeerPrompt("d", "a", [5, 9, 17]), PeerPrompt("d", "b", [3, 4, 5, 6])]


@pytest.fixture
def fake_worker(monkeypatch, tmp_path):
    """run_peers with every family's env at a fake Python and a worker that echoes the job back."""
    calls = []

    def worker(spec, job, timeout_s, python=None):
        calls.append((spec, job, python))
        runs = [{"dataset": p["dataset"], "id": p["id"], "new_tokens": 2, "wall_s": 0.5, "target_calls": 2,
                 "tokens": [7, 8]} for p in job["prompts"]]
        return {"status": "ok", "runs": runs, "detail": {"precision": spec.precision}}

    monkeypatch.setattr(peers_mod, "run_worker", worker)
    monkeypatch.setattr(envs, "ensure_env", lambda family, cache: tmp_path / "envs" / family / "bin" / "python")
    return calls


def test_each_family_runs_in_its_own_env_with_the_gguf_and_stop_ids(fake_worker, tmp_path):
    rows = run_peers(PROMPTS, hf_model=str(tmp_path), draft_lm=None, gguf=str(tmp_path / "m.gguf"),
                     stop_ids=[2, 4], max_new_tokens=16, threads=2, cache_dir=tmp_path)
    ran = {(spec.family, spec.mode, spec.precision): (job, python) for spec, job, python in fake_worker}
    job, python = ran[("llamacpp", "greedy", "gguf")]
    assert python == str(tmp_path / "envs" / "llamacpp" / "bin" / "python")
    assert job["gguf"] == str((tmp_path / "m.gguf").resolve()) and job["stop_ids"] == [2, 4]
    assert job["max_new_tokens"] == 16 and [p["ids"] for p in job["prompts"]] == [[5, 9, 17], [3, 4, 5, 6]]
    assert ran[("ortgenai", "greedy", "int4")][1].endswith("ortgenai/bin/python")
    assert ("hf", "prompt_lookup", "fp32") in ran
    int4 = next(r for r in rows if r["peer"] == "onnxruntime-genai int4 greedy")
    assert int4["precision"] == "int4" and int4["same_weights"] is False and int4["tokens_per_s"] == 4.0
    assert int4["detail"] == {"precision": "int4"}
    # the draft-LM modes need --draft-lm: rows with the reason, no worker
    drafted = [r for r in rows if r["status"].startswith("unavailable: no --draft-lm")]
    assert len(drafted) == sum(s.needs_draft for s in PEERS) and len(fake_worker) == len(PEERS) - len(drafted)


def test_without_gguf_llama_cpp_rows_say_so(fake_worker, tmp_path):
    rows = run_peers(PROMPTS, hf_model=str(tmp_path), draft_lm=None, max_new_tokens=4, threads=2, cache_dir=tmp_path)
    llama = [r for r in rows if r["family"] == "llamacpp"]
    assert llama and all(r["status"].startswith("unavailable: no --gguf given") for r in llama)
    assert all(spec.family != "llamacpp" for spec, _, _ in fake_worker)


def test_here_runs_every_family_in_this_python(fake_worker, tmp_path):
    run_peers(PROMPTS, hf_model=str(tmp_path), draft_lm=None, gguf=str(tmp_path), max_new_tokens=4, threads=2,
              cache_dir=tmp_path, own_envs=False)
    assert fake_worker and all(python is None for _, _, python in fake_worker)


def test_an_env_that_cannot_be_built_is_a_row_with_the_reason(monkeypatch, tmp_path):
    def broken(family, cache):
        raise PeerUnavailable(f"pip exited with 1 for {family}")

    monkeypatch.setattr(envs, "ensure_env", broken)
    rows = run_peers(PROMPTS, hf_model=str(tmp_path), draft_lm=None, gguf=str(tmp_path), max_new_tokens=4,
                     threads=2, cache_dir=tmp_path, specs=[PeerSpec("llamacpp", "greedy", "x", precision="gguf")])
    assert rows[0]["status"] == "unavailable: its virtualenv could not be built: pip exited with 1 for llamacpp"


def test_env_is_keyed_by_its_requirements_and_reused_once_ready(tmp_path, monkeypatch):
    a, b = envs.PeerEnv("x", ("numpy",)), envs.PeerEnv("x", ("numpy", "torch==2.13.0"))
    assert envs.env_dir(a, tmp_path) != envs.env_dir(b, tmp_path)
    assert envs.env_key(envs.ENVS["llamacpp"]) != envs.env_key(envs.PeerEnv("llamacpp", envs.ENVS["llamacpp"].requirements))
    root = envs.env_dir(envs.ENVS["hf"], tmp_path)
    root.mkdir(parents=True)
    (root / ".ready").write_text("{}")
    monkeypatch.setattr(envs, "_run", lambda *a, **k: pytest.fail("a ready env is not rebuilt"))
    assert envs.ensure_env("hf", tmp_path) == root / "bin" / "python"
    with pytest.raises(PeerUnavailable, match="no virtualenv recipe for peer family 'nope'"):
        envs.ensure_env("nope", tmp_path)


def test_llama_cpp_worker_without_its_library_is_unavailable(tmp_path):
    job = {"family": "llamacpp", "mode": "greedy", "threads": 2, "max_new_tokens": 4, "prompts": [],
           "gguf": str(tmp_path / "m.gguf")}
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here")
    assert run_job(job)["status"] == "unavailable: llama-cpp-python not installed (llama_cpp)"


class FakeLlama:
    """llama_cpp.Llama's generate/reset as used by the peer: yields a fixed continuation."""

    def __init__(self, continuation):
        self.continuation, self.resets, self.kwargs = continuation, 0, None

    def reset(self):
        self.resets += 1

    def generate(self, ids, **kwargs):
        self.kwargs = kwargs
        yield from self.continuation


def test_llama_cpp_generation_stops_at_a_stop_id_inclusive_or_max_new_tokens():
    llm = FakeLlama([10, 11, 2, 12, 13])
    assert generate_ids(llm, [1, 2, 3], 16, frozenset({2})) == [10, 11, 2]
    assert generate_ids(llm, [1, 2, 3], 2, frozenset({2})) == [10, 11]
    assert generate_ids(llm, [1], 16, frozenset({99})) == [10, 11, 2, 12, 13]
    assert llm.resets == 3  # every prompt from an empty cache: no prefix reuse between prompts
    assert llm.kwargs["temp"] == 0.0 and llm.kwargs["top_k"] == 1 and llm.kwargs["reset"] is False


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_agreement_counts_and_where_outputs_part():
    ar = {("d", "a"): (1, 2, 3), ("d", "b"): (4, 5, 6)}
    runs = [{"dataset": "d", "id": "a", "tokens": [1, 2, 3]}, {"dataset": "d", "id": "b", "tokens": [4, 9, 6]},
            {"dataset": "d", "id": "c", "tokens": [0]}]
    a = agreement(runs, ar, expected=True)
    assert a == {"same": 1, "prompts": 2, "expected": True, "first_divergence": {"d/b": 1}}
    assert label(a) == "1/2"
    assert label(agreement(runs[:1], ar, expected=False)) == "1/1 (speed only)"
    assert agreement(runs[2:], ar, expected=True) is None and label(None) is None


def test_a_final_stop_id_on_one_side_only_is_no_divergence():
    """onnxruntime-genai's sequence ends before the eos that talon-rt's output ends with."""
    ar = {("d", "a"): (5, 6, 2), ("d", "b"): (5, 6, 2)}
    runs = [{"dataset": "d", "id": "a", "tokens": [5, 6]}, {"dataset": "d", "id": "b", "tokens": [5, 6, 7]}]
    assert agreement(runs, ar, expected=True, stop_ids=[2]) == {"same": 1, "prompts": 2, "expected": True,
                                                                "first_divergence": {"d/b": 2}}
    assert agreement(runs[:1], ar, expected=True)["same"] == 0


def _bench_run(dataset, pid, tokens, engine=""):
    return SimpleNamespace(dataset=dataset, prompt_id=pid, tokens=tuple(tokens),
                           config=SimpleNamespace(policy="ar", temperature=0.0, engine=engine))


@pytest.mark.parametrize("weights, expected", [("float", True), ("int4", False)])
def test_cli_passes_gguf_stop_ids_and_records_agreement(monkeypatch, tmp_path, weights, expected):
    seen = {}

    def fake_run_peers(prompts, **kw):
        seen.update(kw, prompts=prompts)
        return [{"dataset": "d", "peer": "p", "family": "hf", "mode": "greedy", "same_weights": True,
                 "tokens_per_s": 5.0, "status": "ok",
                 "runs": [{"dataset": "d", "id": "a", "tokens": [1, 2]}, {"dataset": "d", "id": "b", "tokens": [3]}]}]

    monkeypatch.setattr(peers_mod, "run_peers", fake_run_peers)
    args = argparse.Namespace(peers_cache=str(tmp_path), no_progress=True, hf_model="hf", draft_lm=None,
                              gguf="m.gguf", max_new_tokens=8, threads=2, peers_here=False)
    plan = SimpleNamespace(prompts=[SimpleNamespace(dataset="d", id="a"), SimpleNamespace(dataset="d", id="b")],
                           prompt_ids=[[1], [2]], warmup=1)
    manifest = SimpleNamespace(tokenizer=SimpleNamespace(stop_ids=(2, 4)), model=SimpleNamespace(weights=weights))
    rows = [{"dataset": "d", "engine": "", "policy": "ar", "temperature": 0.0, "tokens_per_s": 10.0}]
    peers = bench_cli._run_peers(args, plan, rows, [_bench_run("d", "a", [1, 2]), _bench_run("d", "b", [4])], manifest)
    assert seen["gguf"] == "m.gguf" and seen["stop_ids"] == (2, 4) and seen["own_envs"] is True
    assert [p.ids for p in seen["prompts"]] == [[1], [2]]
    p = peers[0]
    assert p["agreement"] == {"same": 1, "prompts": 2, "expected": expected, "first_divergence": {"d/b": 0}}
    assert p["same_output_as_ar"] == ("1/2" if expected else "1/2 (speed only)")
    assert p["talon_rt_ar_over_peer"] == 2.0 and "tokens" not in p["runs"][0]
    assert "1/2" in "\n".join(peers_table(peers, rows))


def test_same_weights_peers_are_checked_against_a_float_compare_engine(monkeypatch, tmp_path):
    """An int4 --engine beside a float --compare-engine: the fp32 peers must match the float engine's ar."""
    monkeypatch.setattr(peers_mod, "run_peers", lambda prompts, **kw: [
        {"dataset": "d", "peer": "p", "family": "hf", "mode": "greedy", "same_weights": True, "tokens_per_s": 5.0,
         "status": "ok", "runs": [{"dataset": "d", "id": "a", "tokens": [7, 8]}]}])
    args = argparse.Namespace(peers_cache=str(tmp_path), no_progress=True, hf_model="hf", draft_lm=None,
                              gguf=None, max_new_tokens=8, threads=2, peers_here=False)
    plan = SimpleNamespace(prompts=[SimpleNamespace(dataset="d", id="a")], prompt_ids=[[1]], warmup=1)
    int4 = SimpleNamespace(tokenizer=SimpleNamespace(stop_ids=(2,)), model=SimpleNamespace(weights="int4"), dir="q")
    fp32 = SimpleNamespace(tokenizer=SimpleNamespace(stop_ids=(2,)), model=SimpleNamespace(weights="float"), dir="f")
    rows = [{"dataset": "d", "engine": e, "policy": "ar", "temperature": 0.0, "tokens_per_s": t}
            for e, t in (("", 10.0), ("f", 4.0))]
    runs = [_bench_run("d", "a", [1, 2]), _bench_run("d", "a", [7, 8], engine="f")]
    p = bench_cli._run_peers(args, plan, rows, runs, int4, [fp32])[0]
    assert p["agreement"]["expected"] is True and p["agreement"]["same"] == 1
    assert p["talon_rt_ar_over_peer"] == 2.0   # the ratio stays --engine's ar over the peer


def test_results_md_lists_each_peer_settings_once():
    from talon_rt.runtime.bench.report import peer_settings
    detail = {"llama-cpp-python": "0.3.36", "cmake_args": "-DGGML_NATIVE=ON", "n_threads": 2}
    peers = [{"peer": "llama.cpp greedy (GGUF)", "detail": detail}, {"peer": "llama.cpp greedy (GGUF)", "detail": detail},
             {"peer": "x", "status": "unavailable: y"}]
    assert peer_settings(peers) == ["- llama.cpp greedy (GGUF): llama-cpp-python 0.3.36; cmake_args -DGGML_NATIVE=ON; "
                                    "n_threads 2"]


def test_gguf_must_be_the_engines_source(tmp_path):
    from talon_rt.runtime.errors import OptionError
    gguf = tmp_path / "other.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    manifest = SimpleNamespace(dir=tmp_path, source={"format": "gguf", "name": "SmolLM2.Q4_1.gguf"})
    with pytest.raises(OptionError, match=r"--gguf .*other.Q4_1.gguf: not the engine's source \(source = gguf "
                                          r"'SmolLM2.Q4_1.gguf'"):
        bench_cli.check_gguf(str(gguf), manifest)
    with pytest.raises(OptionError, match=r"not the engine's source \(source = hf 'target'"):
        bench_cli.check_gguf(str(gguf), SimpleNamespace(dir=tmp_path, source={"format": "hf", "name": "target"}))
    bench_cli.check_gguf(str(gguf), SimpleNamespace(dir=tmp_path, source=None))  # an engine from before sources
    bench_cli.check_gguf(str(gguf), SimpleNamespace(dir=tmp_path, source={"format": "gguf", "name": gguf.name}))
    bench_cli.check_gguf(None, manifest)


def _fake_llama_cpp(monkeypatch):
    """Stand-ins for llama_cpp and llama_cpp.llama_speculative with the API the peer calls."""
    made = []

    class Llama:
        def __init__(self, **kwargs):
            self.kwargs, self.n_tokens = kwargs, 0
            made.append(self)

        def token_eos(self):
            return 2

        def reset(self):
            self.n_tokens = 0

        def eval(self, tokens):
            self.n_tokens += len(tokens)

        def generate(self, ids, **kwargs):
            self.eval(ids)  # prefill, then one eval per token: as Llama.generate without a draft model
            for t in (10, 11, 12, 2, 13):
                yield t
                self.eval([t])

    class LlamaPromptLookupDecoding:
        def __init__(self, max_ngram_size, num_pred_tokens):
            self.max_ngram_size, self.num_pred_tokens = max_ngram_size, num_pred_tokens

    lib = SimpleNamespace(Llama=Llama, __version__="0.3.36", llama_print_system_info=lambda: b"AVX2 = 1 ")
    monkeypatch.setitem(sys.modules, "llama_cpp", lib)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_speculative",
                        SimpleNamespace(LlamaPromptLookupDecoding=LlamaPromptLookupDecoding))
    return made


@pytest.mark.parametrize("mode", ["greedy", "prompt_lookup"])
def test_llama_cpp_peer_opens_the_gguf_with_the_threads_and_counts_calls(monkeypatch, mode):
    from talon_rt.runtime.bench.peers import llamacpp
    made = _fake_llama_cpp(monkeypatch)
    job = {"mode": mode, "threads": 2, "gguf": "/m.gguf", "max_new_tokens": 16, "stop_ids": [2],
           "prompts": [{"ids": [1] * 30}, {"ids": [1] * 100}]}
    generate, detail = llamacpp.open_peer(job)
    kw = made[0].kwargs
    assert kw["model_path"] == "/m.gguf" and kw["n_threads"] == kw["n_threads_batch"] == 2
    assert kw["n_ctx"] == 100 + 16 + llamacpp.CTX_MARGIN and kw["verbose"] is False
    assert (kw["draft_model"] is None) == (mode == "greedy")
    assert generate([1, 2, 3], 16) == ([10, 11, 12, 2], 4)  # the prompt's call yields the first token
    assert detail["n_threads"] == 2 and detail["cmake_args"] == envs.LLAMA_CPP_CMAKE_ARGS
    assert detail["llama-cpp-python"] == "0.3.36" and detail["system_info"] == "AVX2 = 1"
    assert detail["prompt_lookup"] == (llamacpp.PROMPT_LOOKUP if mode == "prompt_lookup" else None)


def test_llama_cpp_peer_needs_the_gguf(monkeypatch):
    from talon_rt.runtime.bench.peers import llamacpp
    _fake_llama_cpp(monkeypatch)
    with pytest.raises(PeerUnavailable, match="no --gguf given"):
        llamacpp.open_peer({"mode": "greedy", "threads": 2, "gguf": None, "prompts": []})
    with pytest.raises(PeerUnavailable, match="unknown llama.cpp mode 'eagle3'"):
        llamacpp.open_peer({"mode": "eagle3", "threads": 2, "gguf": "/m.gguf", "prompts": []})


def test_llama_cpp_wheel_is_reused_only_with_the_same_cmake_flags(tmp_path, monkeypatch):
    root = envs.llama_cpp_dir(tmp_path)
    wheel = root / "wheels" / f"llama_cpp_python-{envs.LLAMA_CPP_PYTHON}-py3-none-linux_x86_64.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"")
    (root / "build").mkdir()
    (root / "build-flags.txt").write_text(envs.LLAMA_CPP_CMAKE_ARGS)
    monkeypatch.setattr(envs, "_run", lambda cmd, log, env=None: pytest.fail(f"rebuilt: {cmd}"))
    assert envs._llama_cpp_wheel(Path("python"), tmp_path, tmp_path / "log") == wheel

    ran = []

    def record(cmd, log, env=None):
        ran.append((cmd, env))
        raise PeerUnavailable("stop here")

    monkeypatch.setattr(envs, "_run", record)
    (root / "build-flags.txt").write_text("-DGGML_NATIVE=OFF")
    (root / f"llama_cpp_python-{envs.LLAMA_CPP_PYTHON}").mkdir()
    (root / f"llama_cpp_python-{envs.LLAMA_CPP_PYTHON}" / "pyproject.toml").write_text("")
    with pytest.raises(PeerUnavailable, match="stop here"):
        envs._llama_cpp_wheel(Path("python"), tmp_path, tmp_path / "log")
    cmd, env = ran[0]
    assert cmd[:3] == ["nice", "-n", "19"] and "wheel" in cmd and f"build-dir={root / 'build'}" in cmd
    assert env["CMAKE_ARGS"] == envs.LLAMA_CPP_CMAKE_ARGS and env["CMAKE_BUILD_PARALLEL_LEVEL"] == "2"
    assert not wheel.exists() and not (root / "build").exists()  # other flags: nothing of the old build kept


def test_only_torch_families_get_a_sleeping_openmp_pool(monkeypatch):
    from talon_rt.runtime.bench.peers import worker_env
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker_env("hf", 2)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert worker_env("ortgenai", 2)["OMP_WAIT_POLICY"] == "PASSIVE"
    llama = worker_env("llamacpp", 2)
    assert "OMP_WAIT_POLICY" not in llama and llama["OMP_NUM_THREADS"] == "2"
