"""scripts/gpu_kit.py: pieces that carry a wheel to the GPU machine, their checks, the install, the plan's
size arithmetic, and the check's step records (a small fake wheel stands in for onnxruntime-gpu)."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


kit_mod = _load("gpu_kit")
check_mod = _load("gpu_kit_check")
KitError, MIB = kit_mod.KitError, kit_mod.MIB


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fake_wheel(folder: Path, name: str = "fakeort-1.0-py3-none-any.whl", tamper: bool = False) -> Path:
    """A wheel with a package, a 300 kB half-compressible blob, a script bit and a RECORD."""
    blob = os.urandom(150_000) + b"abc" * 50_000
    files = {"fakeort/__init__.py": b"VALUE = 42\n", "fakeort/capi/lib.bin": blob,
             "fakeort/tool.sh": b"#!/bin/sh\necho hi\n",
             "fakeort-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakeort\nVersion: 1.0\n",
             "fakeort-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{k},{_record_hash(v)},{len(v)}\n" for k, v in files.items())
    record += "fakeort-1.0.dist-info/RECORD,,\n"
    if tamper:
        files["fakeort/__init__.py"] = b"VALUE = 43\n"   # content no longer matches RECORD
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in files.items():
            info = zipfile.ZipInfo(k)
            info.external_attr = (0o755 if k.endswith(".sh") else 0o644) << 16
            z.writestr(info, v, zipfile.ZIP_DEFLATED)
        z.writestr("fakeort-1.0.dist-info/RECORD", record)
    return path


def transfer(kit: Path, scratch: Path) -> Path:
    """What the device calls do: the manifest and every piece land in a kit folder there."""
    scratch.mkdir(parents=True)
    for f in kit.iterdir():
        if f.name == "manifest.json" or f.suffix[1:].isdigit():
            shutil.copyfile(f, scratch / f.name)
    return scratch


@pytest.mark.parametrize("xz", [None, 0])
def test_pack_transfer_unpack_round_trip(tmp_path, xz):
    wheel = fake_wheel(tmp_path)
    m = kit_mod.pack([wheel], tmp_path / "kit", piece_bytes=64 * 1024, xz_preset=xz)
    (entry,) = m["payloads"]
    pieces = entry["pieces"]
    assert len(pieces) == -(-entry["payload_size"] // (64 * 1024)) > 1
    assert all(p["size"] == 64 * 1024 for p in pieces[:-1]) and sum(p["size"] for p in pieces) == entry["payload_size"]
    assert [p["file"] for p in pieces] == [f"{entry['payload']}.{i:03d}" for i in range(1, len(pieces) + 1)]
    assert entry["compression"] == ("none" if xz is None else "xz")
    there = transfer(tmp_path / "kit", tmp_path / "device" / ".gpu-kit")
    out = kit_mod.unpack(there, there / "site", there / "env.sh")
    assert out["installed"] == [{"wheel": wheel.name, "files": 5}]   # every RECORD row with a hash
    site = there / "site"
    assert (site / "fakeort/__init__.py").read_text() == "VALUE = 42\n"
    assert os.access(site / "fakeort/tool.sh", os.X_OK)
    assert not (there / entry["payload"]).exists() and not (there / entry["installs"]).exists()
    env = (there / "env.sh").read_text()
    assert f"export PYTHONPATH={site}:{kit_mod.ROOT}" in env and "LD_LIBRARY_PATH=" in env
    r = subprocess.run(["bash", "-c", f". {there / 'env.sh'} && {sys.executable} -c "
                                      "'import fakeort, sys; print(fakeort.VALUE, fakeort.__file__)'"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", str(site / "fakeort/__init__.py")]


def test_a_damaged_piece_is_named(tmp_path):
    kit_mod.pack([fake_wheel(tmp_path)], tmp_path / "kit", piece_bytes=64 * 1024, xz_preset=None)
    there = transfer(tmp_path / "kit", tmp_path / "there")
    second = sorted(there.glob("*.002"))[0]
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(KitError, match=rf"{second.name}: sha256 differs from the manifest's"):
        kit_mod.unpack(there, there / "site", there / "env.sh")
    second.write_bytes(bytes(data[:-10]))
    with pytest.raises(KitError, match=rf"{second.name}: {len(data) - 10} bytes, the manifest says {len(data)}"):
        kit_mod.unpack(there, there / "site", there / "env.sh")
    second.unlink()
    with pytest.raises(KitError, match=r"missing 1 of \d+ pieces: .*\.002"):
        kit_mod.unpack(there, there / "site", there / "env.sh")
    assert not (there / "site").exists()
    assert kit_mod.main(["receive", "--kit", str(there)]) == 0   # progress report: missing is not an error


def test_a_wheel_that_disagrees_with_its_record_is_refused(tmp_path):
    kit_mod.pack([fake_wheel(tmp_path, tamper=True)], tmp_path / "kit", piece_bytes=MIB, xz_preset=None)
    with pytest.raises(KitError, match=r"fakeort/__init__.py: sha256 differs from .*RECORD"):
        kit_mod.unpack(tmp_path / "kit", tmp_path / "site", tmp_path / "env.sh")


def test_a_wheel_for_another_python_is_refused_before_reassembly(tmp_path):
    name = "fakeort-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    kit_mod.pack([fake_wheel(tmp_path, name)], tmp_path / "kit", piece_bytes=MIB, xz_preset=None)
    assert kit_mod.wheel_fits(name, (3, 11)) is None
    why = kit_mod.wheel_fits(name, (3, 12))
    assert why == f"{name}: built for cp311, this Python is 3.12 (pack with --python-version 3.12)"
    assert kit_mod.wheel_fits("tok-0.2-cp39-abi3-manylinux_2_17_x86_64.whl", (3, 12)) is None
    if sys.version_info[:2] != (3, 11):
        with pytest.raises(KitError, match="built for cp311"):
            kit_mod.unpack(tmp_path / "kit", tmp_path / "site", tmp_path / "env.sh")


def test_pack_refuses_what_is_not_a_wheel(tmp_path):
    (tmp_path / "x.whl").write_text("not a zip")
    with pytest.raises(KitError, match=r"x.whl: not a wheel"):
        kit_mod.pack([tmp_path / "x.whl"], tmp_path / "kit", piece_bytes=MIB, xz_preset=None)
    with pytest.raises(KitError, match=r"manifest.json: no manifest"):
        kit_mod.read_manifest(tmp_path / "nowhere")


def _manifest(sizes: list[int]) -> dict:
    return {"format": 1, "payloads": [{"pieces": [{"file": f"w.whl.{i:03d}", "size": s, "sha256": "0"}
                                                  for i, s in enumerate(sizes, 1)]}]}


def test_plan_keeps_every_call_under_the_limit_with_the_tree():
    sizes = [15 * MIB] * 16 + [3_911_033]   # the onnxruntime-gpu 1.31.1 cp312 wheel in 15 MiB pieces
    transfer_tree, check_tree = int(1.2 * MIB), int(24.8 * MIB)
    calls = kit_mod.plan_calls(_manifest(sizes), 4500, transfer_tree, check_tree, ".gpu-kit")
    carried = [c for call in calls for c in call.carry if not c.endswith("manifest.json")]
    assert carried == [f".gpu-kit/w.whl.{i:03d}" for i in range(1, 18)]   # each piece once, in order
    for call in calls:
        assert call.total <= kit_mod.CALL_LIMIT - kit_mod.CALL_MARGIN and len(call.carry) <= kit_mod.MAX_CARRY
        assert call.carry[0] == ".gpu-kit/manifest.json"
        assert call.total == call.tree_bytes + 4500 + sum(sizes[int(c[-3:]) - 1] for c in call.carry[1:])
    assert [c.tree_bytes for c in calls] == [transfer_tree] * (len(calls) - 1) + [check_tree]
    assert len(calls) == 5 and calls[-1].final and "unpack" in calls[-1].command and "check" in calls[-1].command
    assert [len(c.carry) - 1 for c in calls] == [4, 4, 4, 2, 3]
    assert calls[-1].command == kit_mod.final_command(".gpu-kit")
    cmd = kit_mod.final_command(".gpu-kit", "--dry-run --reps 3")
    assert cmd.startswith("set -o pipefail; python3 scripts/gpu_kit.py unpack --kit .gpu-kit && . .gpu-kit/env.sh && ")
    assert cmd.endswith('check --out "$OUT" --dry-run --reps 3 2>&1 | tee "$OUT/check.log"')
    # the whole tree (54 MiB) beside a 15 MiB piece cannot fit
    with pytest.raises(KitError, match=r"a piece of 15.0 MiB does not fit beside the tree"):
        kit_mod.plan_calls(_manifest(sizes), 4500, 54 * MIB, 54 * MIB, ".gpu-kit")
    with pytest.raises(KitError, match=r"the last call's tree \(63.5 MiB\) and the manifest leave no room"):
        kit_mod.plan_calls(_manifest(sizes), 4500, transfer_tree, int(63.5 * MIB), ".gpu-kit")
    # many small pieces: the 8-path limit binds, not the bytes
    calls = kit_mod.plan_calls(_manifest([MIB] * 20), 4500, MIB, MIB, ".gpu-kit")
    assert max(len(c.carry) for c in calls) == kit_mod.MAX_CARRY and sum(len(c.carry) - 1 for c in calls) == 20


def test_aside_moves_untravelling_paths_and_puts_them_back(tmp_path):
    repo = tmp_path / "repo"
    for rel, n in (("models/stdlib-pair/w.bin", 3000), ("models/big/w.bin", 5000), ("bench/results/r.json", 700),
                   ("bench/prompts/p.txt", 10), ("scripts/gpu_kit.py", 100)):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(b"x" * n)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/.gpu-kit/\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    files = kit_mod.tree_files(repo)
    assert kit_mod.tree_bytes(repo, files) == 3000 + 5000 + 700 + 10 + 100 + 11
    assert kit_mod.tree_bytes(repo, files, ("models", "bench/results")) == 10 + 100 + 11
    kit = repo / ".gpu-kit"
    assert kit_mod.move_aside(repo, kit, "transfer") == ["models", "bench/results"]
    assert kit_mod.tree_bytes(repo, kit_mod.tree_files(repo)) == 121   # the kit folder is ignored
    kit_mod.ASIDE["test"] = ("models/big", "bench/results")
    try:
        assert kit_mod.move_aside(repo, kit, "test") == ["models/big", "bench/results"]
    finally:
        del kit_mod.ASIDE["test"]
    assert (repo / "models/stdlib-pair/w.bin").is_file() and not (repo / "models/big").exists()
    assert kit_mod.move_aside(repo, kit, None) == []
    assert kit_mod.tree_bytes(repo, kit_mod.tree_files(repo)) == 8821 and not (kit / "aside").exists()


def test_check_steps_record_errors_and_reasons(tmp_path):
    chk = check_mod.Check(tmp_path, deadline_s=60)

    def boom():
        raise ValueError("bad shape (3, 4)")

    def unrunnable():
        raise check_mod.NotRun(check_mod.NO_CUDA)

    assert chk.step("ok", lambda: 7) == 7 and chk.steps["ok"]["status"] == "ok"
    assert chk.step("boom", boom) is None
    assert chk.steps["boom"]["status"] == "failed: ValueError: bad shape (3, 4)"
    assert 'raise ValueError("bad shape (3, 4)")' in chk.steps["boom"]["traceback"]
    chk.step("cuda", unrunnable)
    assert chk.steps["cuda"]["status"] == "not run: no CUDA provider"
    chk.deadline_s = 0
    chk.step("late", lambda: 1)
    assert chk.steps["late"]["status"] == "not run: past the 0 s limit"
    assert check_mod.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert check_mod.first_difference([1, 2, 3], [1, 5, 3]) == 1 and check_mod.first_difference([1, 2], [1, 2, 3]) == 2
    assert check_mod.ints("1-4,8,60") == [1, 2, 3, 4, 8, 60]


def test_a_failing_configuration_keeps_the_others_and_its_traceback(tmp_path):
    chk = check_mod.Check(tmp_path, deadline_s=60)

    def step():
        out = {"device_backend": "ort-cuda", "prompts": 2, "new_tokens": 8, "ar greedy": {"equal": 2, "of": 2},
               "talon greedy": check_mod.guarded(lambda: 1 / 0)}
        raise RuntimeError("talon failed", out)

    chk.step("tokens", step)
    rec = chk.steps["tokens"]
    assert rec["status"] == "failed: RuntimeError: talon failed" and rec["partial"]["ar greedy"]["equal"] == 2
    assert rec["partial"]["talon greedy"]["status"] == "failed: ZeroDivisionError: division by zero"
    args = check_mod.parse_args(["--out", str(tmp_path), "--dry-run"])
    md = check_mod.summary(None, chk, args, "ort-cpu")
    assert "| tokens | failed: RuntimeError: talon failed |" in md and "### tokens: talon greedy" in md
    assert "| ar | 2/2 | not run |" in md and "| talon | failed: ZeroDivisionError: division by zero | not run |" in md
    assert "ZeroDivisionError" in md


def test_make_gpu_kit_packs_the_pinned_wheel_for_the_device_python():
    r = subprocess.run(["make", "-n", "gpu-kit", "gpu-kit-rehearse", "-o", ".venv/.installed"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "scripts/gpu_kit.py pack --spec 'onnxruntime-gpu[cuda,cudnn]==1.31.1'" in r.stdout   # the ORT_GPU pin
    assert "scripts/gpu_kit.py rehearse --kit .gpu-kit/cpu --check-args '--dry-run" in r.stdout
    assert kit_mod.DEVICE_PYTHON == "3.12"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu-kit/x.whl.001"], cwd=ROOT)
    assert ignored.returncode == 0, "the pieces must stay out of git"


def test_the_check_runs_only_the_files_with_gpu_tests():
    files = check_mod.gpu_test_files()
    assert "tests/runtime/test_gpu.py" in files and "tests/export/test_trt.py" in files
    assert "tests/serve/test_api.py" not in files   # imports fastapi, which the GPU image lacks


def test_rehearse_runs_the_planned_calls_against_a_scratch_device(tmp_path):
    """pack -> plan -> each call's tree and carried pieces copied to a scratch folder -> receive there ->
    unpack + env.sh + check (here `check --help`, the check's own steps need the real repository)."""
    repo, scratch = tmp_path / "repo", tmp_path / "device"
    for rel in ("scripts/gpu_kit.py", "scripts/gpu_kit_check.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, repo / rel)
    for rel in ("models/stdlib-pair/w.bin", "models/smollm2-eagle3/w.bin", "bench/results/r.json"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(b"w" * 1000)
    (repo / ".gitignore").write_text("/.gpu-kit/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    kit = repo / ".gpu-kit"
    m = kit_mod.pack([fake_wheel(tmp_path)], kit, piece_bytes=16 * 1024, xz_preset=None)
    calls = kit_mod.plan_calls(m, (kit / "manifest.json").stat().st_size, 1, 1, ".gpu-kit")
    assert len(calls) == 2 and not calls[0].final and len(calls[1].carry) == kit_mod.MAX_CARRY
    assert kit_mod.rehearse(repo, kit, scratch, "--help") == 0
    assert (scratch / ".gpu-kit/site/fakeort/__init__.py").read_text() == "VALUE = 42\n"
    assert "usage: scripts/gpu_kit.py check" in (scratch / "out/check.log").read_text()
    assert (scratch / "models/stdlib-pair/w.bin").is_file() and not (scratch / "bench/results").exists()
    assert not (scratch / "models/smollm2-eagle3").exists()      # moved aside for both kinds of call
    assert (repo / "models/smollm2-eagle3/w.bin").is_file() and not (kit / "aside").exists()   # put back


@pytest.mark.parametrize("tool", [True, False])
def test_xz_payloads_decompress_to_the_stored_wheel(tmp_path, monkeypatch, tool):
    """The xz tool's multi-block stream and Python's single-block one both unpack (lzma reads both)."""
    if not tool:
        monkeypatch.setattr(kit_mod.shutil, "which", lambda name: None)
    elif shutil.which("xz") is None:
        pytest.skip("no xz tool here")
    m = kit_mod.pack([fake_wheel(tmp_path)], tmp_path / "kit", piece_bytes=MIB, xz_preset=1)
    (entry,) = m["payloads"]
    assert entry["compression"] == "xz" and entry["stored_size"] > entry["payload_size"]
    kit_mod.unpack(tmp_path / "kit", tmp_path / "site", tmp_path / "env.sh")
    assert (tmp_path / "site/fakeort/capi/lib.bin").stat().st_size == 300_000
