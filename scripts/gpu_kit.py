"""`python scripts/gpu_kit.py`: carry onnxruntime-gpu to a GPU machine in checked pieces, install it, check.

The machine reaches no registry: the wheel travels from here, installs there beside the image's own
onnxruntime (which stays as it is), and the check (scripts/gpu_kit_check.py) runs with it.

The machine takes one bash command per call with the working tree and at most 64 MiB in all, and keeps
ignored files between back-to-back calls while it is warm. So the wheel travels in pieces:

    pack      (here)   download or take the wheel(s), optionally recompress with xz, split them into
                       numbered pieces with a manifest of sha256s under .gpu-kit/ (git-ignored)
    plan      (here)   the device calls in order: which pieces each carries, its size with the working
                       tree, the command it runs
    receive   (device) the pieces there so far against the manifest, and what the Python there is
    unpack    (device) verify, reassemble, decompress, install into .gpu-kit/site, write .gpu-kit/env.sh
                       (PYTHONPATH first, LD_LIBRARY_PATH to the image's nvidia-* CUDA libraries)
    check     (device) scripts/gpu_kit_check.py: the GPU check, results under --out
    aside     (here)   move what a call does not read out of the working tree, and back
    rehearse  (here)   the plan's calls against a scratch folder standing in for the device (CPU)

Only the standard library here: `receive` and `unpack` run on the device's bare Python.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu-kit"
MANIFEST = "manifest.json"
MIB = 1 << 20
CALL_LIMIT = 64 * MIB        # what one device call sends: the working tree and the carried paths
CALL_MARGIN = 1 * MIB        # headroom for files written between the plan and the call
MAX_CARRY = 8                # paths one call may carry
ORT_GPU = "onnxruntime-gpu==1.31.1"   # built for CUDA 13 (its [cuda] extra pins nvidia-cuda-runtime~=13.0)
DEVICE_PYTHON = "3.12"       # the device image's python3 (3.12.3)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# Tracked paths a call does not read, moved out of the working tree (`aside`) so that they do not travel:
# the check reads the stdlib pair in models/stdlib-pair; a transfer call reads scripts/gpu_kit.py alone.
ASIDE = {"transfer": ("models", "bench/results"), "check": ("models/smollm2-eagle3", "bench/results")}
CHUNK = 4 * MIB


class KitError(Exception):
    """A kit that cannot be packed, carried or installed: one line naming the file and what is wrong."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"gpu-kit: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- pack

def download(spec: str, python: str, dest: Path) -> Path:
    """One wheel from the registry for the device's Python and platform (no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
           "cp", "--python-version", python, *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), spec]
    log(" ".join(shlex.quote(c) for c in cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise KitError(f"pip download {spec}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    name = re.split(r"[=<>\[ ]", spec, maxsplit=1)[0].replace("-", "_").lower()
    found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(name + "-")]
    new = [w for w in found if w not in before] or found
    if not new:
        raise KitError(f"pip download {spec}: no wheel named {name}-* in {dest}")
    return max(new, key=lambda w: w.stat().st_mtime)


def stored_zip(wheel: Path, out: Path) -> None:
    """The wheel with every member stored (not deflated): xz then sees the raw bytes and compresses
    them better than it compresses deflate output. The result is still a valid wheel."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            new = zipfile.ZipInfo(info.filename, info.date_time)
            new.external_attr, new.compress_type = info.external_attr, zipfile.ZIP_STORED
            with src.open(info) as r, dst.open(new, "w", force_zip64=True) as w:
                shutil.copyfileobj(r, w, CHUNK)


def xz_file(src: Path, out: Path, preset: int) -> None:
    """src compressed to the .xz stream out: by the xz tool on every core when it is installed (one stream
    of several blocks, which lzma reads back), else by Python's lzma on one."""
    if shutil.which("xz"):
        with open(out, "wb") as w:
            r = subprocess.run(["xz", f"-{preset}", "-T0", "-c", str(src)], stdout=w, stderr=subprocess.PIPE)
        if r.returncode == 0:
            return
        log(f"xz: exit {r.returncode} ({r.stderr.decode().strip()}); compressing with Python's lzma instead")
    comp = lzma.LZMACompressor(preset=preset)
    with open(src, "rb") as r, open(out, "wb") as w:
        for block in iter(lambda: r.read(CHUNK), b""):
            w.write(comp.compress(block))
        w.write(comp.flush())


def split(payload: Path, piece_bytes: int, first_index: int) -> list[dict]:
    """payload -> payload.001, .002, ... of at most piece_bytes each (numbers global over the kit)."""
    pieces = []
    with open(payload, "rb") as f:
        i = first_index
        while True:
            name = f"{payload.name}.{i:03d}"
            h, n = hashlib.sha256(), 0
            with open(payload.parent / name, "wb") as out:
                while n < piece_bytes:
                    block = f.read(min(CHUNK, piece_bytes - n))
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    n += len(block)
            if n == 0:
                (payload.parent / name).unlink()
                break
            pieces.append({"file": name, "size": n, "sha256": h.hexdigest()})
            i += 1
    return pieces


def pack(wheels: list[Path], kit: Path, piece_bytes: int, xz_preset: int | None) -> dict:
    """Split each wheel (or its xz recompression) into pieces under kit/ and write kit/manifest.json."""
    if piece_bytes <= 0:
        raise KitError(f"piece size {piece_bytes} bytes: must be positive")
    kit.mkdir(parents=True, exist_ok=True)
    for old in kit.glob("*.[0-9][0-9][0-9]"):
        old.unlink()
    payloads, index = [], 1
    for wheel in wheels:
        if not wheel.is_file() or not zipfile.is_zipfile(wheel):
            raise KitError(f"{wheel}: not a wheel (no such file, or not a zip archive)")
        entry = {"wheel": wheel.name, "wheel_size": wheel.stat().st_size, "wheel_sha256": sha256_file(wheel)}
        if xz_preset is None:
            payload = kit / wheel.name
            if payload.resolve() != wheel.resolve():
                shutil.copyfile(wheel, payload)
            entry.update(compression="none", installs=wheel.name, installs_sha256=entry["wheel_sha256"])
        else:
            stored = kit / wheel.name
            tmp = kit / (wheel.name + ".stored")
            stored_zip(wheel, tmp)
            payload = kit / (wheel.name + ".xz")
            log(f"xz -{xz_preset}: {wheel.name} ({tmp.stat().st_size / MIB:.1f} MiB stored)")
            xz_file(tmp, payload, xz_preset)
            entry.update(compression="xz", installs=stored.name, installs_sha256=sha256_file(tmp),
                         stored_size=tmp.stat().st_size)
            tmp.unlink()
        entry.update(payload=payload.name, payload_size=payload.stat().st_size, payload_sha256=sha256_file(payload))
        entry["pieces"] = split(payload, piece_bytes, index)
        index += len(entry["pieces"])
        if payload.resolve() != wheel.resolve():
            payload.unlink()   # the pieces hold it; keeping both would double what the kit folder holds
        payloads.append(entry)
    manifest = {"format": 1, "piece_bytes": piece_bytes, "payloads": payloads}
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_manifest(path: Path, error: type[Exception], script: str) -> dict:
    """The JSON at `path`; `error` naming the file (and `python scripts/<script> pack` when it is missing)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no manifest (run `python scripts/{script} pack` here, carry it there)") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not JSON ({e})") from None


def read_manifest(kit: Path) -> dict:
    path = kit / MANIFEST
    manifest = load_manifest(path, KitError, "gpu_kit.py")
    if manifest.get("format") != 1 or not isinstance(manifest.get("payloads"), list):
        raise KitError(f"{path}: field format/payloads: not a gpu-kit manifest of format 1")
    return manifest


def all_pieces(manifest: dict) -> list[dict]:
    return [p for entry in manifest["payloads"] for p in entry["pieces"]]


# ---------------------------------------------------------------------------------------------- plan

def tree_files(root: Path) -> list[Path]:
    """What a device call sends as the working tree: tracked and untracked-not-ignored files on disk."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                       capture_output=True, check=True)
    return [Path(p) for p in r.stdout.decode().split("\0") if p and (root / p).is_file()]


def tree_bytes(root: Path, files: list[Path], aside: tuple[str, ...] = ()) -> int:
    """Bytes of files, less those under the paths in aside."""
    under = tuple(a.rstrip("/") + "/" for a in aside)
    return sum((root / f).stat().st_size for f in files if not (str(f) + "/").startswith(under))


def move_aside(root: Path, kit: Path, which: str | None) -> list[str]:
    """Put back whatever an earlier call moved aside, then move ASIDE[which] (None: nothing) into
    kit/aside/, an ignored folder that does not travel; the paths moved."""
    store = kit / "aside"
    if store.is_dir():
        for path in sorted(p for p in store.rglob("*") if p.is_file()):
            rel = path.relative_to(store)
            if (root / rel).exists():
                raise KitError(f"{root / rel}: exists both in the tree and in {store} (move one away by hand)")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            path.rename(root / rel)
        shutil.rmtree(store)
    moved = []
    for rel in ASIDE[which] if which else ():
        if (root / rel).exists():
            (store / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).rename(store / rel)
            moved.append(rel)
    return moved


@dataclass(frozen=True)
class Call:
    carry: list[str]        # paths relative to the repository root
    carried_bytes: int
    tree_bytes: int
    command: str
    final: bool

    @property
    def total(self) -> int:
        return self.carried_bytes + self.tree_bytes


def final_command(kit_rel: str, check_args: str = "") -> str:
    """unpack, env.sh, the check; its output also to $OUT/check.log (kept if the call hits its limit)."""
    return (f"set -o pipefail; python3 scripts/gpu_kit.py unpack --kit {kit_rel} && . {kit_rel}/env.sh && "
            f"PYTHONUNBUFFERED=1 python3 scripts/gpu_kit.py check --out \"$OUT\"{' ' + check_args if check_args else ''}"
            f" 2>&1 | tee \"$OUT/check.log\"")


def plan_calls(manifest: dict, manifest_bytes: int, transfer_tree: int, check_tree: int, kit_rel: str) -> list[Call]:
    """Pieces into back-to-back calls: each carries the manifest and as many pieces as fit beside the
    transfer tree (at most MAX_CARRY paths); the last call runs unpack and the check beside the check tree
    and carries whatever pieces still fit there."""
    pieces = all_pieces(manifest)
    room_final = CALL_LIMIT - CALL_MARGIN - check_tree - manifest_bytes
    room = CALL_LIMIT - CALL_MARGIN - transfer_tree - manifest_bytes
    if room_final < 0:
        raise KitError(f"the last call's tree ({check_tree / MIB:.1f} MiB) and the manifest leave no room in a "
                       f"{CALL_LIMIT // MIB} MiB call: keep the tree smaller")
    biggest = max((p["size"] for p in pieces), default=0)
    if biggest > room:
        raise KitError(f"a piece of {biggest / MIB:.1f} MiB does not fit beside the tree "
                       f"({transfer_tree / MIB:.1f} MiB; {room / MIB:.1f} MiB left in a {CALL_LIMIT // MIB} MiB "
                       f"call): pack with a smaller --piece-mib, or keep the tree smaller")
    # the final call takes the tail of the pieces that fit beside the check tree
    tail: list[dict] = []
    for p in reversed(pieces):
        if len(tail) + 2 > MAX_CARRY or sum(q["size"] for q in tail) + p["size"] > room_final:
            break
        tail.insert(0, p)
    head = pieces[:len(pieces) - len(tail)]
    calls, batch = [], []
    man = f"{kit_rel}/{MANIFEST}"

    def flush():
        calls.append(Call([man] + [f"{kit_rel}/{p['file']}" for p in batch],
                          manifest_bytes + sum(p["size"] for p in batch), transfer_tree,
                          f"python3 scripts/gpu_kit.py receive --kit {kit_rel}", False))

    for p in head:
        if batch and (len(batch) + 2 > MAX_CARRY or sum(q["size"] for q in batch) + p["size"] > room):
            flush()
            batch = []
        batch.append(p)
    if batch:
        flush()
    final = final_command(kit_rel)
    calls.append(Call([man] + [f"{kit_rel}/{p['file']}" for p in tail],
                      manifest_bytes + sum(p["size"] for p in tail), check_tree, final, True))
    return calls


def plan(root: Path, kit: Path) -> tuple[list[Call], dict]:
    manifest = read_manifest(kit)
    files = tree_files(root)
    sizes = {"tree": tree_bytes(root, files), "check_tree": tree_bytes(root, files, ASIDE["check"]),
             "transfer_tree": tree_bytes(root, files, ASIDE["transfer"])}
    calls = plan_calls(manifest, (kit / MANIFEST).stat().st_size, sizes["transfer_tree"], sizes["check_tree"],
                       os.path.relpath(kit, root))
    return calls, sizes


def print_plan(root: Path, kit: Path) -> int:
    calls, sizes = plan(root, kit)
    manifest = read_manifest(kit)
    mib = lambda n: f"{n / MIB:.1f} MiB"   # noqa: E731
    print(f"working tree now: {mib(sizes['tree'])}; without {', '.join(ASIDE['check'])} (the last call): "
          f"{mib(sizes['check_tree'])}; without {', '.join(ASIDE['transfer'])} (the transfer calls): "
          f"{mib(sizes['transfer_tree'])}")
    for e in manifest["payloads"]:
        print(f"payload {e['payload']}: {mib(e['payload_size'])} ({e['compression']}; wheel {mib(e['wheel_size'])}) "
              f"in {len(e['pieces'])} pieces")
    print(f"\nEach call sends the working tree as it is on disk. Move what a call does not read out of it "
          f"(into {os.path.relpath(kit, root)}/aside/, ignored) right before the calls, and back after:\n"
          f"    python3 scripts/gpu_kit.py aside transfer   # before call 1: moves {', '.join(ASIDE['transfer'])}\n"
          f"    python3 scripts/gpu_kit.py aside check      # before the last call: moves only "
          f"{', '.join(ASIDE['check'])}\n"
          f"    python3 scripts/gpu_kit.py aside            # after it: everything back (`git status` clean)\n")
    print(f"{len(calls)} calls, back to back (the machine keeps the pieces only while warm, ~30 s idle); "
          f"each under {CALL_LIMIT // MIB} MiB:")
    for i, c in enumerate(calls, 1):
        print(f"\ncall {i}{' (last: unpack + check, timeout_s 600)' if c.final else ''}: "
              f"tree {mib(c.tree_bytes)} + carried {mib(c.carried_bytes)} = {mib(c.total)}")
        print(f"  carry:   {json.dumps(c.carry)}")
        print(f"  command: {c.command}")
    return 0


def rehearse(root: Path, kit: Path, scratch: Path, check_args: str) -> int:
    """The plan's calls on this machine: for each, the tree as it would travel (after `aside`) and the
    carried paths are copied into scratch, as the device's copy of the repository, and the call's command
    runs there with OUT=scratch/out (check_args appended to the last). Everything moved aside comes back."""
    calls, _ = plan(root, kit)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    try:
        for i, call in enumerate(calls, 1):
            move_aside(root, kit, "check" if call.final else "transfer")
            for rel in tree_files(root) + [Path(c) for c in call.carry]:
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / rel, scratch / rel)
            out = scratch / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            command = final_command(os.path.relpath(kit, root), check_args) if call.final else call.command
            log(f"call {i}/{len(calls)}: {command}")
            t0 = time.perf_counter()
            env = {**os.environ, "OUT": str(out),   # `python3` there: this Python (a venv's, here)
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            r = subprocess.run(["bash", "-c", command], cwd=scratch, env=env)
            log(f"call {i}: exit {r.returncode} in {time.perf_counter() - t0:.1f} s")
            if r.returncode != 0:
                return r.returncode
    finally:
        move_aside(root, kit, None)
    log(f"results: {scratch / 'out'}")
    return 0


# ------------------------------------------------------------------------------------ device side

def wheel_fits(wheel: str, version: tuple[int, int] = sys.version_info[:2]) -> str | None:
    """None when a wheel of this name installs for this Python, else why not."""
    m = re.match(r"^(?P<name>.+?)-(?P<ver>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$", wheel)
    if not m:
        return f"{wheel}: not a wheel file name (name-version-python-abi-platform.whl)"
    cp = f"cp{version[0]}{version[1]}"
    pys = m["py"].split(".")
    if cp in pys or "py3" in pys or (m["abi"] == "abi3" and any(p.startswith("cp3") and int(p[3:]) <= version[1]
                                                                for p in pys)):
        return None
    return (f"{wheel}: built for {m['py']}, this Python is {version[0]}.{version[1]} "
            f"(pack with --python-version {version[0]}.{version[1]})")


def verify_pieces(kit: Path, manifest: dict, need_all: bool) -> tuple[list[dict], list[dict]]:
    """(present and intact, missing); a piece whose size or sha256 differs from the manifest raises."""
    have, missing = [], []
    for p in all_pieces(manifest):
        path = kit / p["file"]
        if not path.is_file():
            missing.append(p)
            continue
        size = path.stat().st_size
        if size != p["size"]:
            raise KitError(f"{path}: {size} bytes, the manifest says {p['size']} (cut short in transfer? send it again)")
        if sha256_file(path) != p["sha256"]:
            raise KitError(f"{path}: sha256 differs from the manifest's (damaged in transfer: send it again)")
        have.append(p)
    if need_all and missing:
        raise KitError(f"{kit}: missing {len(missing)} of {len(have) + len(missing)} pieces: "
                       f"{', '.join(p['file'] for p in missing[:6])}{' ...' if len(missing) > 6 else ''} "
                       f"(the machine went back between calls? send them all again)")
    return have, missing


def nvidia_lib_dirs() -> list[str]:
    """The lib folders of the nvidia-* pip packages (CUDA runtime, cuBLAS, cuDNN, ...) this Python sees."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs: set[str] = set()
    for base in map(Path, getattr(nvidia, "__path__", [])):
        for lib in list(base.glob("*/lib")) + list(base.glob("*/*/lib")):
            if lib.is_dir() and any(lib.glob("*.so*")):
                dirs.add(str(lib))
    return sorted(dirs)


def _record_hashes(target: Path, wheel: zipfile.ZipFile) -> int:
    """Every file the wheel's RECORD lists, checked on disk in target; the number checked."""
    record = next((n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)), None)
    if record is None:
        raise KitError(f"{wheel.filename}: no *.dist-info/RECORD")
    n = 0
    for row in csv.reader(io.StringIO(wheel.read(record).decode())):
        if len(row) < 2 or not row[1]:
            continue
        algo, _, want = row[1].partition("=")
        h = hashlib.new(algo)
        with open(target / row[0], "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != want:
            raise KitError(f"{target / row[0]}: {algo} differs from {record} (bad install)")
        n += 1
    return n


def install_wheel(wheel: Path, target: Path) -> int:
    """Unzip a wheel into target (what `pip install --no-deps --target` does for a pure layout) and check
    each file against its RECORD; the number of files checked."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts:
                raise KitError(f"{wheel}: unsafe member path {name!r}")
            if re.match(r"[^/]+\.data/(purelib|platlib)/", name):
                raise KitError(f"{wheel}: .data/ layouts are not handled (member {name})")
        z.extractall(target)
        for info in z.infolist():
            mode = info.external_attr >> 16
            if mode & 0o111 and not info.is_dir():
                os.chmod(target / info.filename, mode & 0o777)
        return _record_hashes(target, z)


def unpack(kit: Path, target: Path, env_file: Path) -> dict:
    """Verify every piece, reassemble and decompress each payload, install it into target, write env_file."""
    t0 = time.perf_counter()
    manifest = read_manifest(kit)
    for e in manifest["payloads"]:
        why = wheel_fits(e["wheel"])
        if why:
            raise KitError(why)
    verify_pieces(kit, manifest, need_all=True)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    installed = []
    for e in manifest["payloads"]:
        payload = kit / e["payload"]
        with open(payload, "wb") as out:
            for p in e["pieces"]:
                with open(kit / p["file"], "rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
        if sha256_file(payload) != e["payload_sha256"]:
            raise KitError(f"{payload}: sha256 of the reassembled payload differs from the manifest's")
        wheel = kit / e["installs"]
        if e["compression"] == "xz":
            decomp = lzma.LZMADecompressor()
            with open(payload, "rb") as r, open(wheel, "wb") as w:
                for block in iter(lambda: r.read(CHUNK), b""):
                    w.write(decomp.decompress(block))
            payload.unlink()
        elif e["compression"] != "none":
            raise KitError(f"{kit / MANIFEST}: field compression: {e['compression']!r} (none | xz)")
        if sha256_file(wheel) != e["installs_sha256"]:
            raise KitError(f"{wheel}: sha256 after decompression differs from the manifest's")
        files = install_wheel(wheel, target)
        wheel.unlink()
        installed.append({"wheel": e["wheel"], "files": files})
        log(f"installed {e['wheel']} into {target} ({files} files, RECORD hashes checked)")
    libs = nvidia_lib_dirs()
    env = {"PYTHONPATH": [str(target), str(ROOT)], "LD_LIBRARY_PATH": libs}
    env_file.write_text("# written by scripts/gpu_kit.py unpack: source it before the check\n"
                        f"export PYTHONPATH={shlex.quote(':'.join(env['PYTHONPATH']))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                        f"export LD_LIBRARY_PATH={shlex.quote(':'.join(libs))}"
                        "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n")
    (env_file.with_suffix(".json")).write_text(json.dumps({"env": env, "installed": installed}, indent=2) + "\n")
    log(f"wrote {env_file}: PYTHONPATH {target}; LD_LIBRARY_PATH {len(libs)} nvidia lib folders"
        + ("" if libs else " (none found: `import nvidia` failed or holds no lib/)")
        + f"; unpack took {time.perf_counter() - t0:.1f} s")
    return {"installed": installed, "env": env}


def piece_list(pieces: list[dict]) -> str:
    """'none', or the first piece's name and the last's number: 'w.whl.005 .. .017 (13)'."""
    if not pieces:
        return "none"
    first, last = pieces[0]["file"], pieces[-1]["file"]
    return first if len(pieces) == 1 else f"{first} .. {last.rsplit('.', 1)[-1]} ({len(pieces)})"


def receive(kit: Path) -> int:
    manifest = read_manifest(kit)
    have, missing = verify_pieces(kit, manifest, need_all=False)
    got = sum(p["size"] for p in have)
    log(f"{len(have)}/{len(have) + len(missing)} pieces here and intact ({got / MIB:.1f} MiB); "
        f"missing: {piece_list(missing)}")
    log(f"python {sys.version.split()[0]} at {sys.executable}; nvidia lib folders: {nvidia_lib_dirs() or 'none'}")
    bad = [why for e in manifest["payloads"] if (why := wheel_fits(e["wheel"]))]
    for why in bad:
        log(why)
    return 1 if bad else 0


# ------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_kit.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="download or take the wheel(s), split them into pieces under --kit")
    pk.add_argument("--wheel", action="append", type=Path, default=[], help="a wheel file (repeatable); "
                    f"none: download --spec")
    pk.add_argument("--spec", action="append", default=[], help=f"a requirement to download (default {ORT_GPU})")
    pk.add_argument("--python-version", default=DEVICE_PYTHON, help="the device's Python (default %(default)s)")
    pk.add_argument("--piece-mib", type=float, default=15.0, help="piece size in MiB (default %(default)s)")
    pk.add_argument("--xz", type=int, metavar="PRESET", default=None, choices=range(10),
                    help="recompress with xz at this preset (0-9): smaller, slower to pack")
    for name, h in (("plan", "print the device calls"), ("receive", "device: check the pieces there so far"),
                    ("unpack", "device: verify, reassemble, install, write env.sh")):
        s = sub.add_parser(name, help=h)
        s.add_argument("--kit", type=Path, default=KIT)
    sub.choices["plan"].add_argument("--json", action="store_true", help="the calls as JSON (carry, command, bytes)")
    unpack_p = sub.choices["unpack"]
    unpack_p.add_argument("--target", type=Path, default=None, help="install folder (default KIT/site)")
    sub.choices["pack"].add_argument("--kit", type=Path, default=KIT)
    rp = sub.add_parser("rehearse", help="run the plan's calls here, the device a scratch folder (CPU rehearsal)")
    rp.add_argument("--kit", type=Path, default=KIT)
    rp.add_argument("--scratch", type=Path, default=Path("/tmp/talon-gpu-kit-rehearsal"),
                    help="the device's stand-in (default %(default)s; replaced)")
    rp.add_argument("--check-args", default="--dry-run", help="appended to the check (default %(default)s)")
    ap = sub.add_parser("aside", help="move what a call does not read out of the tree (no argument: put it back)")
    ap.add_argument("which", nargs="?", choices=sorted(ASIDE))
    ap.add_argument("--kit", type=Path, default=KIT)
    sub.add_parser("check", help="device: the GPU check (scripts/gpu_kit_check.py; --help there)", add_help=False)
    args, rest = p.parse_known_args(argv)
    try:
        if args.cmd == "check":   # by path: an installed package named `scripts` would shadow the folder
            sys.path[:0] = [str(ROOT / "scripts"), str(ROOT)]
            import gpu_kit_check
            return gpu_kit_check.main(rest)
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        kit = args.kit.resolve()
        if args.cmd == "pack":
            wheels = list(args.wheel) or [download(s, args.python_version, kit / "download")
                                          for s in (args.spec or [ORT_GPU])]
            m = pack(wheels, kit, int(args.piece_mib * MIB), args.xz)
            for e in m["payloads"]:
                log(f"{e['wheel']}: wheel {e['wheel_size'] / MIB:.1f} MiB, payload {e['payload_size'] / MIB:.1f} MiB "
                    f"({e['compression']}), {len(e['pieces'])} pieces")
            return print_plan(ROOT, kit)
        if args.cmd == "plan" and args.json:
            calls, sizes = plan(ROOT, kit)
            print(json.dumps({"sizes": sizes, "calls": [{**vars(c), "total": c.total} for c in calls]}, indent=1))
            return 0
        if args.cmd == "plan":
            return print_plan(ROOT, kit)
        if args.cmd == "rehearse":
            return rehearse(ROOT, kit, args.scratch.resolve(), args.check_args)
        if args.cmd == "aside":
            moved = move_aside(ROOT, kit, args.which)
            log(f"moved aside: {', '.join(moved) or 'nothing'}; tree now "
                f"{tree_bytes(ROOT, tree_files(ROOT)) / MIB:.1f} MiB")
            return 0
        if args.cmd == "receive":
            return receive(kit)
        if args.cmd == "unpack":
            unpack(kit, (args.target or kit / "site").resolve(), kit / "env.sh")
            return 0
    except KitError as e:
        print(f"gpu-kit: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
