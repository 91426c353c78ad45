"""The head's GPU run rehearsed on the CPU (scripts/head_gpu.py): pack a tiny target into pieces, the
device calls in a scratch copy of the working tree, unpack; checksums, piece sizes, resume from token ids."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
STDLIB = {"alpha.py": 'def add(a, b):\n    """Return the sum of two numbers, converting both to int first."""\n'
                      '    return int(a) + int(b)\n\n\ndef scale(xs, k):\n    """Multiply every element of the '
                      'list by the factor k and return a new list."""\n    return [x * k for x in xs]\n'}


def _module():
    spec = importlib.util.spec_from_file_location("head_gpu", ROOT / "scripts" / "head_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def hg():
    return _module()


@pytest.fixture(scope="module")
def rehearsal(hg, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("head_gpu")
    stdlib = scratch / "stdlib"
    for rel, text in STDLIB.items():
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text(text)
    out = hg.rehearse(scratch, None, f"{hg.TINY_RUN} --stdlib-root {stdlib}", 0.25)
    return scratch, out


def test_pieces_are_checked_and_the_plan_fits_a_call(hg, rehearsal):
    scratch, _ = rehearsal
    kit = scratch / "home" / ".gpu-head"
    manifest = hg.read_manifest(kit)
    pieces = [p for e in manifest["payloads"] for p in e["pieces"]]
    assert len(pieces) >= 3 and all(p["size"] <= 0.25 * hg.MIB for p in pieces)
    for p in pieces:
        assert hg.gpu_kit.sha256_file(kit / p["file"]) == p["sha256"]
    calls = hg.plan_calls(ROOT, kit, rel=".gpu-head", max_pieces=2)
    assert len(calls) >= 2 and all(c["bytes"] <= hg.gpu_kit.CALL_LIMIT for c in calls)
    assert all(len(c["carry"]) <= hg.gpu_kit.MAX_CARRY for c in calls)
    assert sorted(r for c in calls for r in c["carry"] if not r.endswith(hg.MANIFEST)) == \
        sorted(f".gpu-head/{p['file']}" for p in pieces)
    assert "run --kit .gpu-head" in calls[-1]["command"] and "receive" in calls[0]["command"]


def test_a_damaged_piece_is_refused(hg, rehearsal, tmp_path):
    import shutil

    scratch, _ = rehearsal
    kit = tmp_path / "kit"
    shutil.copytree(scratch / "home" / ".gpu-head", kit, ignore=shutil.ignore_patterns("payload", "work"))
    first = hg.read_manifest(kit)["payloads"][0]["pieces"][0]["file"]
    data = bytearray((kit / first).read_bytes())
    data[100] ^= 1
    (kit / first).write_bytes(bytes(data))
    with pytest.raises(hg.gpu_kit.KitError, match="sha256"):
        hg.assemble(kit)


def test_outputs_are_sealed_and_unpacked(hg, rehearsal):
    scratch, out = rehearsal
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    for path in out.rglob("*"):
        assert not path.is_file() or path.stat().st_size <= 16 * hg.MIB
    for rel in ("head/config.json", "head/model.safetensors", "tokens-train.npz", "tokens-heldout.npz",
                "log.json", "eval.json", "latest/model.safetensors"):
        assert rel in manifest, rel
    home = scratch / "home"
    dest = home / "runs" / "head-gpu" / "head-gpu-rehearsal"
    for rel, entry in manifest.items():
        assert hg.gpu_kit.sha256_file(dest / rel) == entry["sha256"]
    assert (home / "models" / "head-gpu-rehearsal" / "model.safetensors").read_bytes() == \
        (out / "head" / "model.safetensors").read_bytes()
    log = json.loads((dest / "log.json").read_text())
    assert log["device"] == "cpu" and log["phases"]["train"]["steps"] == log["phases"]["train"]["planned_steps"]
    assert len(log["phases"]["eval"]["per_step"]) == 3 and log["phases"]["eval"]["positions"] > 0


def test_big_files_are_split_and_joined(hg, tmp_path, monkeypatch):
    monkeypatch.setattr(hg, "OUT_PIECE", 1000)
    out = tmp_path / "out"
    (out / "head").mkdir(parents=True)
    blob = np.random.default_rng(0).bytes(2500)
    (out / "head" / "model.safetensors").write_bytes(blob)
    (out / "small.json").write_text("{}")
    files = hg.seal(out)
    assert len(files["head/model.safetensors"]["pieces"]) == 3
    assert not (out / "head" / "model.safetensors").exists()
    assert all(p.stat().st_size <= 1000 for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    hg.seal(out)  # sealing again (after the next phase) keeps the pieces as they are
    dest = hg.unpack(out, tmp_path / "home", "x")
    assert (dest / "head" / "model.safetensors").read_bytes() == blob


def test_resume_from_token_ids_rebuilds_the_same_features(hg, rehearsal, tmp_path):
    from talon_rt.train.recipes.head import features, generate
    from talon_rt.train.recipes.head import target as target_mod
    from talon_rt.train.recipes.head.dataset import data_folder
    from talon_rt.train.target_pass import taps

    scratch, _ = rehearsal
    device_work = scratch / "device" / ".gpu-head" / "work"
    work = tmp_path / "work"
    restored = hg.restore_tokens(scratch / "home" / "runs" / "head-gpu" / "head-gpu-rehearsal", work)
    assert restored == sum(len(generate.shards(data_folder(device_work, s))) for s in hg.SPLITS) > 0
    lm, tok = target_mod.load(scratch / "pair" / "target")
    pad = target_mod.stop_ids(lm, tok)[0]
    for split in hg.SPLITS:
        for shard in generate.shards(data_folder(work, split)):
            features.run(lm, shard, taps(lm), pad)
            there = data_folder(device_work, split) / shard.name
            np.testing.assert_array_equal(np.load(features.feature_path(shard)),
                                          np.load(features.feature_path(there)))
            np.testing.assert_array_equal(np.load(features.greedy_path(shard)),
                                          np.load(features.greedy_path(there)))
