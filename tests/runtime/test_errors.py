"""Every bad input raises a talon_rt.runtime.errors exception whose message names the culprit,
and leaves nothing half-done (the engine dir is untouched, an open Generator still works)."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import ClosedError, EngineError, InputError, OptionError, TalonError
from talon_rt.runtime.manifest import open_manifest

from tests.helpers import copy_engine, edit_manifest, relist


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def gen(tiny_engine):
    g = Generator.open(tiny_engine, policy="talon")
    yield g
    g.close()


def test_all_errors_share_a_base():
    for cls in (EngineError, OptionError, InputError, ClosedError):
        assert issubclass(cls, TalonError)


# -- engine directory ---------------------------------------------------------------------------


def test_engine_dir_missing(tmp_path):
    with pytest.raises(EngineError, match=r"engine directory not found: .*nowhere"):
        Generator.open(tmp_path / "nowhere")


def test_manifest_missing(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "manifest.json").unlink()
    with pytest.raises(EngineError, match=r"manifest\.json: missing"):
        Generator.open(eng)


def test_manifest_invalid_json(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "manifest.json").write_text('{"format_version": 1,\n  "name": }')
    with pytest.raises(EngineError, match=r"manifest\.json: invalid JSON at line 2 column"):
        Generator.open(eng)


def test_unknown_format_version(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m.__setitem__("format_version", 2))
    with pytest.raises(EngineError, match=r"format_version: unsupported value 2 \(this runtime reads 1\)"):
        Generator.open(eng)


def test_missing_field(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["limits"].pop("max_seq_len"))
    with pytest.raises(EngineError, match=r"manifest\.json: limits\.max_seq_len: missing"):
        Generator.open(eng)


def test_wrong_type(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["model"].__setitem__("hidden_size", "64"))
    with pytest.raises(EngineError, match=r"model\.hidden_size: expected an integer, got str"):
        Generator.open(eng)


def test_wrong_dims_vs_graph(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["model"].__setitem__("vocab_size", 321))
    with pytest.raises(EngineError, match=r"target\.onnx: output 'logits' dim 2 is 320, manifest implies 321.*"
                                          r"model\.vocab_size"):
        Generator.open(eng)


def test_wrong_kv_dims_vs_graph(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["limits"].__setitem__("max_seq_len", 512))
    with pytest.raises(EngineError, match=r"input 'past_key_0' dim 2 is 256, manifest implies 512.*"
                                          r"limits\.max_seq_len"):
        Generator.open(eng)


def test_checksum_mismatch(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    data = bytearray((eng / "draft.onnx").read_bytes())
    data[-10] ^= 0xFF
    (eng / "draft.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"draft\.onnx: checksum mismatch \(sha256 .* files\.draft\.onnx\.sha256"):
        Generator.open(eng)


def test_listed_file_missing(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "tokenizer.json").unlink()
    with pytest.raises(EngineError, match=r"tokenizer\.json: missing \(listed in manifest\.json files\)"):
        Generator.open(eng)


def test_graph_io_not_matching(tiny_engine, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    g = helper.make_graph([helper.make_node("Identity", ["feats"], ["hidden"])], "fc",
                          [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, "q", 192])],
                          [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "q", 192])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(eng / "draft_fc.onnx"))
    relist(eng, "draft_fc.onnx")
    with pytest.raises(EngineError, match=r"draft_fc\.onnx: input 'features' missing \(graph has \['feats'\]\)"):
        Generator.open(eng)


def test_graph_not_onnx(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    (eng / "draft.onnx").write_bytes(b"not a graph")
    relist(eng, "draft.onnx")
    with pytest.raises(EngineError, match=r"draft\.onnx: onnxruntime cannot load the graph"):
        Generator.open(eng)


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "is not a plain file name"),
    ("../target.onnx", "is not a plain file name"),
    ("sub/target.onnx", "is not a plain file name"),
])
def test_unsafe_file_names(tiny_engine, tmp_path, name, why):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["graphs"]["target"].__setitem__("file", name))
    with pytest.raises(EngineError, match=rf"graphs\.target\.file: '{name}' {why}"):
        Generator.open(eng)


def test_symlink_rejected(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    outside = tmp_path / "outside.json"
    shutil.move(eng / "tokenizer.json", outside)
    os.symlink(outside, eng / "tokenizer.json")
    with pytest.raises(EngineError, match=r"tokenizer\.file: 'tokenizer\.json' is a symbolic link"):
        Generator.open(eng)


def test_unlisted_graph(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["files"].pop("draft.onnx"))
    with pytest.raises(EngineError, match=r"graphs\.draft\.file: 'draft\.onnx' is not listed in 'files'"):
        Generator.open(eng)


def test_failed_open_leaves_engine_untouched(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["model"].__setitem__("vocab_size", 321))
    before = _digest(eng)
    with pytest.raises(EngineError):
        Generator.open(eng)
    assert _digest(eng) == before


def test_manifest_budget_default_above_limit(tiny_engine, tmp_path):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, lambda m: m["defaults"].__setitem__("budget", 65))
    with pytest.raises(OptionError, match=r"option budget: 65 outside \[1, limits\.max_tree_tokens=64\]"):
        Generator.open(eng)


def test_open_manifest_reads_the_contract(tiny_engine):
    m = open_manifest(tiny_engine)
    assert (m.model.vocab_size, m.draft.k_max, m.limits.max_seq_len) == (320, 32, 256)
    assert m.feature_size == 3 * m.model.hidden_size


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts, err, msg", [
    ({"budget": 65}, OptionError, r"option budget: 65 outside \[1, limits\.max_tree_tokens=64\]"),
    ({"budget": 0}, OptionError, r"option budget: 0 outside \[1, "),
    ({"mu": 0.0}, OptionError, r"option mu: 0\.0 outside \(0, 1\]"),
    ({"mu": 1.5}, OptionError, r"option mu: 1\.5 outside \(0, 1\]"),
    ({"temperature": -0.1}, OptionError, r"option temperature: -0\.1 < 0"),
    ({"policy": "medusa"}, OptionError, r"option policy: unknown policy 'medusa' \(expected one of ar, chain, "
                                        r"eagle3, talon, talon-cost, lookup, talon-lookup, talon-gated\)"),
    ({"top_p": 0.0}, OptionError, r"option top_p: 0\.0 outside \(0, 1\]"),
    ({"budget": "16"}, OptionError, r"option budget: expected an integer, got '16'"),
    ({"backend": "cuda"}, OptionError, r"option backend: unknown backend 'cuda'"),
    ({"beam": 3}, OptionError, r"unknown option\(s\) \['beam'\]"),
])
def test_bad_options(tiny_engine, opts, err, msg):
    with pytest.raises(err, match=msg):
        Generator.open(tiny_engine, **opts)


# -- prompts (and the generator stays usable) ---------------------------------------------------


@pytest.mark.parametrize("prompt, msg", [
    ([], r"prompt is empty"),
    ([1, 5, 320], r"prompt token id 320 at index 2 is outside the vocabulary \[0, 320\)"),
    ([1, -1], r"prompt token id -1 at index 1 is outside the vocabulary"),
    ([1] * 256, r"prompt of 256 tokens does not fit the context: limits\.max_seq_len=256"),
    ([1] * 1000, r"prompt of 1000 tokens does not fit the context"),
])
def test_bad_prompts_leave_generator_usable(gen, prompt, msg):
    before = gen.generate([1, 7, 9, 11], max_new_tokens=12).tokens
    with pytest.raises(InputError, match=msg):
        gen.generate(prompt, max_new_tokens=8)
    assert gen.generate([1, 7, 9, 11], max_new_tokens=12).tokens == before


def test_non_integer_prompt(gen):
    with pytest.raises(InputError, match=r"prompt_ids must be a sequence of integers"):
        gen.generate(["a", "b"], max_new_tokens=4)


def test_bad_max_new_tokens(gen):
    with pytest.raises(OptionError, match=r"option max_new_tokens: expected an integer >= 1 or -1, got 0"):
        gen.generate([1, 2], max_new_tokens=0)


def test_max_new_tokens_minus_one_runs_until_a_stop_or_the_context(gen):
    """-1 per call, as the option's default: until a stop id or a full context."""
    res = gen.generate([1, 2], max_new_tokens=-1)
    assert res.stop_reason in ("eos", "context_full")
    assert res.stop_reason == "eos" or len(res.tokens) + 2 >= gen.manifest.limits.max_seq_len


def test_closed(tiny_engine):
    g = Generator.open(tiny_engine, policy="ar")
    g.close()
    g.close()  # idempotent
    with pytest.raises(ClosedError, match=r"Generator is closed"):
        g.generate([1, 2, 3], max_new_tokens=4)
    with pytest.raises(ClosedError):
        g.encode("x")


def test_long_prompt_is_chunked_and_context_fills(tiny_engine):
    """A 240-token prompt (2 prefill chunks of <= 128) runs to the end of the 256-token context."""
    prompt = [1] + np.random.default_rng(3).integers(3, 320, size=239).tolist()
    outs = {}
    for policy in ("ar", "chain", "eagle3", "talon"):
        with Generator.open(tiny_engine, policy=policy) as g:
            res = g.generate(prompt, max_new_tokens=100)
        eos = [i for i, t in enumerate(res.tokens) if t == 2]
        assert res.stop_reason == ("eos" if eos else "context_full"), policy
        outs[policy] = res.tokens
        if res.stop_reason == "context_full":
            assert len(prompt) + len(res.tokens) == 256 + 1  # the last token is the one past the cache
    assert all(o == outs["ar"] for o in outs.values()), {k: len(v) for k, v in outs.items()}


def test_open_closes_the_backend_when_the_decoder_refuses(tiny_engine, monkeypatch):
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.backends.base import Backend
    from talon_rt.runtime.backends.ort import OrtBackend
    from talon_rt.runtime.errors import OptionError

    def refuse(self, rows, scratch):
        raise OptionError(f"a footprint of {rows}/{scratch} rows does not fit")

    closed = []
    close = OrtBackend.close
    monkeypatch.setattr(Backend, "check_footprint", refuse)
    monkeypatch.setattr(OrtBackend, "close", lambda self: (closed.append(self), close(self)))
    with pytest.raises(OptionError, match="does not fit"):
        Generator.open(tiny_engine, policy="talon", budget=8)
    assert len(closed) == 1
