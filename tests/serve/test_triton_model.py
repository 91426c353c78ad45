"""The Triton side without Triton: `talon-rt triton-repo` writes a repository a stock server loads, and its
python-backend model (runtime/triton/model.py) streams one response per accepted piece whose tokens equal
the runtime's, under a stand-in for Triton's `triton_python_backend_utils`. The real server run is the
PyTriton slow test (tests/serve/test_triton_pytriton.py)."""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.cli import main
from talon_rt.runtime.triton.spec import INPUTS, OUTPUTS
from talon_rt.runtime.triton.stream import StreamRequest, generate_stream

FINAL = 1


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class FakeSender:
    def __init__(self, cancel_after: int | None = None):
        self.responses: list = []
        self.flags: list[int] = []
        self.cancel_after = cancel_after

    def send(self, response=None, flags=0):
        self.responses.append(response)
        self.flags.append(flags)

    def is_cancelled(self):
        return self.cancel_after is not None and len(self.responses) >= self.cancel_after


class FakeRequest:
    def __init__(self, inputs: dict, sender: FakeSender):
        self.inputs, self.sender = inputs, sender

    def get_response_sender(self):
        return self.sender


def fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    pb.Tensor = FakeTensor
    pb.TritonModelException = RuntimeError
    pb.TritonError = lambda message: ("error", message)
    pb.InferenceResponse = lambda output_tensors=None, error=None: (
        {t.name: t.array for t in output_tensors} if error is None else error)
    pb.get_input_tensor_by_name = lambda request, name: (
        FakeTensor(name, request.inputs[name]) if name in request.inputs else None)
    pb.using_decoupled_model_transaction_policy = lambda config: config["model_transaction_policy"]["decoupled"]
    return pb


@pytest.fixture
def repo(tiny_engine, tmp_path):
    assert main(["triton-repo", "--engine", str(tiny_engine), "--out", str(tmp_path / "repo"),
                 "--instances", "2", "--threads", "1"]) == 0
    return tmp_path / "repo" / "talon"


@pytest.fixture
def model(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("talon_triton_model", repo / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    m = module.TritonPythonModel()
    # what Triton hands initialize(): the config as JSON, and the model's folder
    m.initialize({"model_config": json.dumps({"model_transaction_policy": {"decoupled": True},
                                              "parameters": parameters(repo / "config.pbtxt")}),
                  "model_repository": str(repo), "model_version": "1"})
    yield m
    m.finalize()


def parameters(config: Path) -> dict:
    """config.pbtxt's parameters as Triton's JSON model config carries them."""
    out = {}
    for line in config.read_text().splitlines():
        if line.startswith("parameters"):
            key = line.split('key: "')[1].split('"')[0]
            value = json.loads(line.split("string_value: ")[1].rsplit(" } }", 1)[0])
            out[key] = {"string_value": value}
    return out


def test_repository_layout_and_config(repo, tiny_engine):
    assert (repo / "1" / "model.py").read_text() == (Path("runtime/triton/model.py")).read_text()
    assert (repo / "engine" / "manifest.json").read_bytes() == (Path(tiny_engine) / "manifest.json").read_bytes()
    config = (repo / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "decoupled: true" in config
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in config
    for t in INPUTS + OUTPUTS:
        assert f'name: "{t.name}" data_type: {t.triton_type}' in config
    assert parameters(repo / "config.pbtxt") == {"engine_dir": {"string_value": "engine"},
                                                 "options": {"string_value": '{"threads": 1}'}}


def test_triton_repo_refuses_bad_input(tiny_engine, tmp_path, capsys):
    assert main(["triton-repo", "--engine", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert main(["triton-repo", "--engine", str(tiny_engine), "--out", str(tmp_path / "r"), "--budget", "999"]) == 2
    assert "option budget" in capsys.readouterr().err
    assert main(["triton-repo", "--engine", str(tiny_engine), "--out", str(tmp_path / "r")]) == 0
    assert main(["triton-repo", "--engine", str(tiny_engine), "--out", str(tmp_path / "r")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_model_streams_the_runtime_tokens(model, tiny_engine):
    with Generator.open(tiny_engine, threads=1) as gen:
        want = gen.generate_text("hello world", max_new_tokens=30)
    sender = FakeSender()
    model.execute([FakeRequest({"text_input": np.array([b"hello world"], dtype=np.object_),
                                "max_tokens": np.array([30], dtype=np.int32)}, sender)])
    assert sender.flags[-1] == FINAL and sender.responses[-1] is None
    pieces = sender.responses[:-1]
    assert len(pieces) > 1                               # streamed, one response per round
    assert [int(t) for p in pieces for t in p["token_ids"]] == want.tokens
    assert "".join(p["text_output"][0].decode() for p in pieces) == want.text


def test_model_sampling_inputs_and_errors(model, tiny_engine):
    with Generator.open(tiny_engine, threads=1, temperature=0.8, seed=3) as gen:
        want = gen.generate(gen.encode("abc"), max_new_tokens=12).tokens
    ok, bad, long = FakeSender(), FakeSender(), FakeSender()
    model.execute([
        FakeRequest({"text_input": np.array([b"abc"], dtype=np.object_), "max_tokens": np.array([12], np.int32),
                     "temperature": np.array([0.8], np.float32), "seed": np.array([3], np.int64)}, ok),
        FakeRequest({"text_input": np.array([b"abc"], dtype=np.object_), "top_p": np.array([1.5], np.float32)}, bad),
        FakeRequest({"text_input": np.array([b"x " * 400], dtype=np.object_)}, long),
    ])
    assert [int(t) for p in ok.responses[:-1] for t in p["token_ids"]] == want
    assert bad.responses == [("error", bad.responses[0][1])] and bad.flags == [FINAL]
    assert bad.responses[0][1].startswith("OptionError: option top_p")
    assert long.responses[0][1].startswith("InputError:") and "context" in long.responses[0][1]


def test_a_cancelled_request_stops_early(model):
    sender = FakeSender(cancel_after=2)
    model.execute([FakeRequest({"text_input": np.array([b"hello"], dtype=np.object_),
                                "max_tokens": np.array([200], np.int32)}, sender)])
    tokens = sum(len(p["token_ids"]) for p in sender.responses[:-1])
    assert sender.flags[-1] == FINAL and tokens < 100


def test_closing_the_stream_stops_the_generation(tiny_engine):
    with Generator.open(tiny_engine, threads=1) as gen:
        stream = generate_stream(gen, StreamRequest("hello", 200))
        first = next(stream)
        stream.close()                                   # joins the worker: the generation has stopped
        assert first.tokens and gen.generate(gen.encode("hello"), 5).stop_reason == "max_new_tokens"
