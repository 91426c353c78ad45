"""HF target folder + EAGLE-3 head folder -> a complete engine directory (docs/engine-format.md).

Everything is written to a temporary directory beside the output and renamed into place at the
end, so an interrupted or failed export never leaves a half-written engine directory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from export import checkpoints, onnx_graphs, quantize
from export.config import HeadConfig
from export.engine_dir import FORMAT_VERSION, file_record, verify_engine_dir
from export.errors import CheckpointError, ExportError

CREATED_BY = "talon-rt 0.1.0"


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "float32"  # float32 | float16: dtype of weights, KV, features and hidden
    max_seq_len: int = 1024  # S: rows of every static KV buffer (prompt + generated)
    max_tree_tokens: int = 64  # bounds q of a verify call (budget N, root included); paper's N=60 fits
    max_prefill_chunk: int = 128  # bounds q of a prefill call
    k_max: int = 32  # children per draft row in topk_*; >= the widest layer a policy asks for
    # target/draft attention: gqa (ORT only, KV written in place; 8-17 % cheaper target calls than
    # standard on the 2-core CPU, demo engine) | standard (standard ops: TensorRT needs it)
    flavour: str = "gqa"
    # draft_fc/draft MatMul weights: float (dtype) | int8 | int4 (ORT MatMulNBits; lossless: the
    # target verifies every draft token; export/quantize.py)
    draft_weights: str = "float"
    # manifest defaults to set instead of default_run_settings' values, as (key, value) pairs
    # (`--default budget=8`: a budget sweep's answer for the machine the engine is built for)
    defaults: tuple[tuple[str, object], ...] = ()

    def check(self) -> None:
        if self.dtype not in onnx_graphs.DTYPES:
            raise ExportError(f"--dtype {self.dtype!r}: expected one of {', '.join(onnx_graphs.DTYPES)}")
        if self.flavour not in onnx_graphs.FLAVOURS:
            raise ExportError(f"--flavour {self.flavour!r}: expected one of {', '.join(onnx_graphs.FLAVOURS)}")
        if self.draft_weights not in quantize.DRAFT_WEIGHTS:
            raise ExportError(f"--draft-weights {self.draft_weights!r}: expected one of "
                              f"{', '.join(quantize.DRAFT_WEIGHTS)}")
        if self.draft_weights != "float" and self.dtype != "float32":
            raise ExportError(f"--draft-weights {self.draft_weights} needs --dtype float32, got {self.dtype}")
        if self.draft_weights != "float" and self.flavour != "gqa":
            raise ExportError(f"--draft-weights {self.draft_weights} needs --flavour gqa (ONNX Runtime only; "
                              f"TensorRT plans need float draft weights)")
        known = default_run_settings(ExportOptions())
        for key, value in self.defaults:
            if key not in known:
                raise ExportError(f"--default {key}={value}: unknown key (expected one of {', '.join(known)})")
            if type(value) is not type(known[key]) and not (isinstance(known[key], float) and type(value) is int):
                raise ExportError(f"--default {key}={value}: expected a {type(known[key]).__name__}")
            if key == "budget" and not 1 <= value <= self.max_tree_tokens:
                raise ExportError(f"--default budget={value}: outside [1, --max-tree-tokens {self.max_tree_tokens}]")
        for name in ("max_seq_len", "max_tree_tokens", "max_prefill_chunk", "k_max"):
            if getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_tree_tokens", "max_prefill_chunk"):
            if getattr(self, name) > self.max_seq_len:
                raise ExportError(f"--{name.replace('_', '-')} {getattr(self, name)} exceeds "
                                  f"--max-seq-len {self.max_seq_len}")


def default_run_settings(opts: ExportOptions) -> dict:
    """manifest `defaults`: what the runtime uses for an option the caller leaves out (`opts.defaults`
    override these)."""
    return {**_builtin_settings(opts), **dict(opts.defaults)}


def _builtin_settings(opts: ExportOptions) -> dict:
    return {
        "policy": "talon",
        "budget": min(16, opts.max_tree_tokens),  # CPUs want a small tree (DESIGN §8); the bench sweeps it
        "mu": 0.03,  # the paper's confidence ratio
        "root_k": 10,  # the paper's K for layer 0
        "eagle3_top_k": 10,  # EAGLE-3's top_k
        "eagle3_depth": 7,  # EAGLE-3's depth
        "chain_depth": 4,
        "max_new_tokens": 128,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
    }


def export_engine(model_dir: str | Path, draft_dir: str | Path, out_dir: str | Path,
                  opts: ExportOptions = ExportOptions(), name: str | None = None, force: bool = False,
                  check: bool = False, log: Callable[[str], None] = lambda msg: None) -> Path:
    """Build the engine directory `out_dir`; returns its path. `log` receives one line per stage.

    check: run the graphs once through ORT against the reference modules (export.check) before the
    directory is moved into place; a failure leaves nothing behind.
    """
    opts.check()
    model_dir, draft_dir, out_dir = Path(model_dir), Path(draft_dir), Path(out_dir)
    if not draft_dir.is_dir():
        raise CheckpointError(f"--draft {draft_dir}: not a directory")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir}: already exists (use --force to replace it)")
    source = checkpoints.open_source(model_dir)
    if isinstance(source, checkpoints.HFFolder) and not (model_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{model_dir / 'tokenizer.json'}: not found (the engine needs a tokenizers-format "
                              f"tokenizer.json)")

    def stage(msg: str, t0: float) -> None:
        log(f"{msg} ({time.perf_counter() - t0:.1f} s)")

    with torch.no_grad():
        t0 = time.perf_counter()
        head_cfg = HeadConfig.from_hf(checkpoints.read_config(draft_dir), str(draft_dir / "config.json"))
        # fp16 engines: load in fp16 (half the memory of a large model; the graph weights are the same)
        target = checkpoints.load_target(source, feature_layers=head_cfg.feature_layers,
                                         dtype=torch.float16 if opts.dtype == "float16" else torch.float32)
        tc = target.config
        stage(f"loaded target {tc.architecture} from {_describe(source.description())}: {tc.num_layers} layers, hidden {tc.hidden_size}, "
              f"vocab {tc.vocab_size}, taps {list(tc.feature_layers)}", t0)
        t0 = time.perf_counter()
        head = checkpoints.load_head(draft_dir, target)
        stage(f"loaded EAGLE-3 head: draft vocab {head.config.draft_vocab_size}, "
              f"{'own' if head.embed_tokens is not None else 'target'} embedding", t0)
        if opts.k_max > head.config.draft_vocab_size:
            raise ExportError(f"--k-max {opts.k_max} exceeds the head's draft_vocab_size {head.config.draft_vocab_size}")

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        tmp.chmod(0o755)
        try:
            files: list[Path] = []
            for fname, build in (
                    ("target.onnx", lambda: onnx_graphs.build_target(target, opts.dtype, opts.max_seq_len,
                                                                     opts.flavour)),
                    ("draft_fc.onnx", lambda: onnx_graphs.build_draft_fc(head, opts.dtype)),
                    ("draft.onnx", lambda: onnx_graphs.build_draft(head, opts.dtype, opts.max_seq_len, opts.k_max,
                                                                   opts.flavour))):
                t0 = time.perf_counter()
                written = onnx_graphs.save(build(), tmp / fname)
                kind = opts.dtype
                if fname == "draft.onnx" and opts.draft_weights != "float":   # draft_fc is one Gemm: kept
                    n = quantize.quantize_graph(tmp / fname, opts.draft_weights)
                    kind = f"{n} MatMul weights {opts.draft_weights}"
                files += written
                stage(f"wrote {', '.join(p.name for p in written)} "
                      f"({sum(p.stat().st_size for p in written) / 1e6:.1f} MB, {kind})", t0)
            t0 = time.perf_counter()
            source.write_tokenizer(tmp / "tokenizer.json")
            files.append(tmp / "tokenizer.json")
            tokenizer = tokenizer_record(source, tmp / "tokenizer.json", tc.vocab_size)
            manifest = _manifest(name or out_dir.name, target, head, opts, tokenizer, files)
            manifest["source"] = source.description()
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            verify_engine_dir(tmp)
            chat = "chat template, stop ids " + str(tokenizer["stop_ids"]) if tokenizer["chat_template"] else "no chat template"
            stage(f"wrote tokenizer.json ({chat}), manifest.json (sha256 of every file)", t0)
            if check:
                from export.check import check_engine
                t0 = time.perf_counter()
                r = check_engine(tmp, target, head)
                stage(f"checked against the reference: target max |diff| {r['target_max_abs_diff']:.1e} "
                      f"(top-1 {r['target_top1']:.0%}), draft max |diff| {r['draft_max_abs_diff']:.1e} "
                      f"(top-1 {r['draft_top1']:.0%})", t0)
            _replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"engine directory ready: {out_dir}")
    return out_dir


def tokenizer_record(source, tokenizer_file: Path, vocab_size: int) -> dict:
    """The manifest's `tokenizer` object: file, special ids, the chat template and the ids generation
    stops at (eos + the template's end-of-turn token)."""
    from tokenizers import Tokenizer
    from runtime.chat import end_of_turn
    special = source.special_tokens(vocab_size)
    template = source.chat_template
    stop = list(special["eos_ids"])
    if template is not None:
        tok = Tokenizer.from_file(str(tokenizer_file))
        name = lambda i: tok.id_to_token(i) if i is not None else ""   # noqa: E731
        try:
            eot = end_of_turn(template, tok, name(special["bos_id"]), name(stop[0] if stop else None))
        except Exception as e:  # the template is the model's: any failure to render it is the model's
            raise CheckpointError(f"{source.path}: chat template does not render ({type(e).__name__}: {e})") from None
        if eot is not None and eot not in stop:
            stop.append(eot)
    return {"file": "tokenizer.json", **special, "chat_template": template, "stop_ids": stop}


def _describe(src: dict) -> str:
    return f"{src['format'].upper()} {src['name']}" + (f" ({src['quantization']})" if src.get("quantization") else "")


def _manifest(name: str, target, head, opts: ExportOptions, tokenizer: dict, files: list[Path]) -> dict:
    tc, hc = target.config, head.config
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_by": CREATED_BY,
        "model": {"architecture": tc.architecture, "vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size,
                  "num_layers": tc.num_layers, "num_heads": tc.num_heads, "num_kv_heads": tc.num_kv_heads,
                  "head_dim": tc.head_dim, "feature_layers": list(tc.feature_layers), "dtype": opts.dtype},
        "draft": {"hidden_size": hc.hidden_size, "num_heads": hc.num_heads, "num_kv_heads": hc.num_kv_heads,
                  "head_dim": hc.head_dim, "draft_vocab_size": hc.draft_vocab_size, "k_max": opts.k_max,
                  "weights": opts.draft_weights},
        "tokenizer": tokenizer,
        "limits": {"max_seq_len": opts.max_seq_len, "max_tree_tokens": opts.max_tree_tokens,
                   "max_prefill_chunk": opts.max_prefill_chunk},
        "defaults": default_run_settings(opts),
        # draft_fc has no attention: always standard ops
        "graphs": {role: {"file": f"{role}.onnx", "flavour": "standard" if role == "draft_fc" else opts.flavour}
                   for role in ("target", "draft_fc", "draft")},
        "files": {p.name: file_record(p) for p in sorted(files, key=lambda p: p.name)},
    }


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished temp dir to out_dir; an existing out_dir is only removed once tmp is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
