"""`python -m talon_rt.train.recipes.head` with wrong inputs: each is one line on stderr and a named exit status
before any work is done (a missing, foreign, truncated or head-folder --model; an unwritable --out; bad
numbers; SIGINT), and a work folder never mixes two models' data or resumes past its schedule."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from talon_rt.export.errors import ExportError  # noqa: E402
from talon_rt.export.tiny import make_tiny_pair, write_gguf  # noqa: E402
from talon_rt.train import loop  # noqa: E402
from talon_rt.train.loop import TrainSpec  # noqa: E402
from talon_rt.train.recipes.head import pipeline  # noqa: E402
from talon_rt.train.recipes.head.__main__ import main  # noqa: E402
from talon_rt.train.recipes.head.train import draft_ids  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), seed=6, chat=True)


def one_line_error(capsys, argv: list[str], status: int = 1) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_models_are_named_in_one_line(pair, tmp_path, capsys):
    out = ["--out", str(tmp_path / "head")]
    assert "--model " + str(tmp_path / "nope") + ": not found" in one_line_error(
        capsys, ["--model", str(tmp_path / "nope"), *out])
    (tmp_path / "empty").mkdir()
    assert "no config.json (not a Hugging Face model folder)" in one_line_error(
        capsys, ["--model", str(tmp_path / "empty"), *out])
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a GGUF file" in one_line_error(capsys, ["--model", str(tmp_path / "notes.txt"), *out])
    assert "an EAGLE-3 head folder; --model is the target model" in one_line_error(
        capsys, ["--model", str(pair[1]), *out])
    gguf = write_gguf(pair[0], tmp_path / "cut.gguf", "F32")
    gguf.write_bytes(gguf.read_bytes()[:len(gguf.read_bytes()) // 2])
    err = one_line_error(capsys, ["data", "--model", str(gguf), *out, "--work", str(tmp_path / "w")])
    assert "cut.gguf: transformers cannot load it" in err


def test_bad_numbers_and_an_unwritable_out_stop_before_any_work(pair, tmp_path, capsys):
    for flag, value in (("--threads", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--eval-conversations", "-2")):
        with pytest.raises(SystemExit) as e:
            main(["--model", str(pair[0]), "--out", str(tmp_path / "head"), flag, value])
        assert e.value.code == 2 and flag in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    err = one_line_error(capsys, ["--model", str(pair[0]), "--out", str(tmp_path / "file" / "head")])
    assert "--out " in err and "cannot be written" in err
    assert not (tmp_path / "head.work").exists()


def test_sigint_is_one_line_and_status_130(pair, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("talon_rt.train.recipes.head.__main__.run", interrupted)
    try:
        err = one_line_error(capsys, ["--model", str(pair[0]), "--out", str(tmp_path / "h")], 130)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert "interrupted" in err


def test_a_work_folder_refuses_another_model(pair, tmp_path):
    other, _ = make_tiny_pair(tmp_path / "other", seed=7, chat=True, layers=3)
    work = tmp_path / "work"
    pipeline.claim_work(work, pair[0])
    pipeline.claim_work(work, pair[0])                     # the same model resumes
    with pytest.raises(ExportError, match=r"--work .*: holds data of another model .* not of --model"):
        pipeline.claim_work(work, other)
    gguf = write_gguf(pair[0], tmp_path / "m.gguf", "F32")
    with pytest.raises(ExportError, match="holds data of another model"):
        pipeline.claim_work(work, gguf)
    assert json.loads((work / "model.json").read_text())["model"] == str(pair[0])


def test_a_vocabulary_smaller_than_the_draft_vocabulary_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match=r"vocabulary \(100 tokens\) is smaller than the head's draft vocabulary "
                                          r"\(200\)"):
        draft_ids(None, 100, 200, tmp_path)
    assert not (tmp_path / "draft_ids.npy").exists()


def test_a_checkpoint_past_the_schedule_is_refused(tmp_path):
    module = torch.nn.Linear(2, 2)
    spec = TrainSpec(tokens=4 * 8, batch=1, seq_len=8, lr=1e-3, warmup_steps=1)
    opt = torch.optim.AdamW(module.parameters())
    loop._save(tmp_path / loop.CKPT, {"model": module.state_dict(), "optim": opt.state_dict(),
                                      "state": {"step": 8, "tokens": 64, "seconds": 1.0, "loss": 1.0}})
    with pytest.raises(ExportError, match=r"ckpt.pt: a checkpoint at step 8, past this run's 4 steps"):
        loop.train("head", module, lambda step: (module.weight.sum(), 8), spec, tmp_path)
