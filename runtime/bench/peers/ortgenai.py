"""onnxruntime-genai 0.18: the target exported by its own builder for CPU at fp32 or int4 (and the
draft LM at fp32), then greedy decoding, draft-model speculation and n-gram lookup through its
Generator.

Builds are cached by the source folder's file names, sizes and mtimes. onnxruntime_genai is
imported here only.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from talon_rt.runtime.bench.peers import PeerUnavailable

DRAFT_K = 4  # onnxruntime-genai's default max_draft_tokens
NGRAM = {"ngram_size": 3, "max_draft_tokens": 8, "ngram_chained_lookup": True}  # its tuning guide's start


def _key(src: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _with_tokenizer(src: Path, tokenizer_dir: Path | None, cache: Path) -> Path:
    """The builder copies the tokenizer files into its output and fails without them: a draft LM
    folder that has none is staged (links) with the target's."""
    if tokenizer_dir is None or (src / "tokenizer.json").is_file():
        return src
    stage = cache / f"stage-{src.name}-{_key(src)}"
    stage.mkdir(parents=True, exist_ok=True)
    for f in [*src.iterdir(), *(t for t in tokenizer_dir.iterdir() if t.name.startswith("tokenizer"))]:
        link = stage / f.name
        if f.is_file() and not link.exists():
            link.symlink_to(f.resolve())
    return stage


PRECISIONS = ("fp32", "int4")


def build(src: Path, cache: Path, tokenizer_dir: Path | None = None, precision: str = "fp32") -> Path:
    """Export an HF folder with onnxruntime-genai's builder (cpu, `precision`), once."""
    if precision not in PRECISIONS:
        raise PeerUnavailable(f"precision {precision!r} not built here (expected one of {', '.join(PRECISIONS)})")
    suffix = "" if precision == "fp32" else f"-{precision}"
    out = cache / f"ortgenai-{src.name}-{_key(src)}{suffix}"
    if (out / "genai_config.json").is_file():
        return out
    src = _with_tokenizer(src, tokenizer_dir, cache)
    if importlib.util.find_spec("onnx_ir") is None:
        raise PeerUnavailable("onnxruntime-genai's builder needs onnx_ir (pip install onnx-ir)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(cache / "builder-cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"its builder failed on {src}: {last[0][:200]}")
    tmp.rename(out)
    return out


SPIN_KEY = "session.intra_op.allow_spinning"


def _set_threads(decoder: dict, threads: int, spinning: bool) -> None:
    so = decoder.setdefault("session_options", {})
    so["intra_op_num_threads"] = threads
    so["inter_op_num_threads"] = 1
    if spinning:
        so.pop(SPIN_KEY, None)  # ORT's default: spinning on
    else:
        so[SPIN_KEY] = "0"


def _with_threads(model_dir: Path, threads: int, spinning: bool = True) -> Path:
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    _set_threads(cfg["model"]["decoder"], threads, spinning)
    if "draft" in cfg["model"]:
        _set_threads(cfg["model"]["draft"], threads, spinning)
    path.write_text(json.dumps(cfg, indent=2))
    return model_dir


def speculative_dir(target: Path, draft: Path, cache: Path) -> Path:
    """A composite model folder: the target's decoder plus the draft's as `model.draft`.
    Its config may not point outside the folder, so both builds are linked in."""
    root = cache / f"ortgenai-spec-{target.name}--{draft.name}"
    root.mkdir(parents=True, exist_ok=True)
    for name, src in (("target", target), ("draft", draft)):
        link = root / name
        if not link.exists():
            link.symlink_to(src.resolve(), target_is_directory=True)
    tcfg = json.loads((target / "genai_config.json").read_text())
    dcfg = json.loads((draft / "genai_config.json").read_text())
    if tcfg["model"]["vocab_size"] != dcfg["model"]["vocab_size"]:
        raise PeerUnavailable(f"draft LM vocab {dcfg['model']['vocab_size']} != target vocab "
                              f"{tcfg['model']['vocab_size']}")
    cfg = copy.deepcopy(tcfg)
    cfg["model"]["type"] = "speculative"
    cfg["model"]["decoder"]["filename"] = f"target/{tcfg['model']['decoder']['filename']}"
    cfg["model"]["draft"] = copy.deepcopy(dcfg["model"]["decoder"])
    cfg["model"]["draft"]["filename"] = f"draft/{dcfg['model']['decoder']['filename']}"
    cfg["speculative"] = {"max_draft_tokens": DRAFT_K}
    (root / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    for f in target.iterdir():  # tokenizer files beside the composite config
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy2(f, root / f.name)
    return root


def open_peer(job: dict) -> tuple[Callable[[list[int], int], tuple[list[int], int | None]], dict[str, Any]]:
    try:
        import numpy as np
        import onnxruntime_genai as og
    except ImportError as e:
        raise PeerUnavailable(f"onnxruntime-genai not installed ({e.name}); pip install onnxruntime-genai==0.18.0") from None
    cache = Path(job["cache_dir"])
    precision = job.get("precision", "fp32")
    target = build(Path(job["hf_model"]), cache, precision=precision)
    mode, spec_opts = job["mode"], None
    # two sessions on two cores: spinning pools fight (docs/design.md §7), so the draft mode also runs without
    spinning = not mode.endswith("-nospin")
    mode = mode.removesuffix("-nospin")
    if mode == "greedy":
        model_dir = target
    elif mode == "ngram":
        model_dir, spec_opts = target, dict(NGRAM)
    elif mode == "draft" and precision == "fp32":
        draft = build(Path(job["draft_lm"]), cache, tokenizer_dir=Path(job["hf_model"]))
        _with_threads(draft, job["threads"], spinning)
        model_dir, spec_opts = speculative_dir(target, draft, cache), {"max_draft_tokens": DRAFT_K}
    else:
        raise PeerUnavailable(f"unknown onnxruntime-genai mode {mode!r}")
    _with_threads(target, job["threads"], spinning)
    model = og.Model(str(_with_threads(model_dir, job["threads"], spinning)))

    def generate(ids: list[int], max_new_tokens: int) -> tuple[list[int], int | None]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
        if spec_opts:
            params.set_speculative_options(**spec_opts)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        new = [int(t) for t in gen.get_sequence(0)[len(ids):]]
        calls = int(gen.get_speculative_stats()["target_forward_passes"]) if spec_opts else len(new)
        return new, calls

    detail = {"onnxruntime-genai": og.__version__, "model_dir": str(model_dir), "precision": precision,
              "speculative_options": spec_opts, "threads": job["threads"], "spinning": spinning}
    return generate, detail
