"""HF target folder (or GGUF file) + EAGLE-3 head folder -> a complete engine directory
(docs/engine-format.md). Without a head: a target-only engine (target.onnx alone; policy ar).

Everything is written to a temporary directory beside the output and renamed into place at the
end, so an interrupted or failed export never leaves a half-written engine directory.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from talon_rt.export import checkpoints, onnx_graphs, quantize
from talon_rt.export.config import HeadConfig
from talon_rt.export.engine_dir import FORMAT_VERSION, file_record, verify_engine_dir
from talon_rt.export.errors import CheckpointError, ExportError
from talon_rt.export.reference import Eagle3Head, Target
from talon_rt.export.signals import signals_held
from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest import MANIFEST, ROLES, cache_bytes, check_fits_memory
from talon_rt.talon.policies import BASELINE, BUDGET, ENGINE_DEFAULT, KNOBS

CREATED_BY = "talon-rt 0.1.0"


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "float32"  # float32 | float16: dtype of weights, KV, features and hidden
    # S: rows of every static KV buffer (prompt + generated); None: the model's context within
    # CONTEXT_KV_BYTES of target KV cache (auto_max_seq_len)
    max_seq_len: int | None = None
    max_tree_tokens: int = 64  # bounds q of a verify call (budget N, root included); paper's N=60 fits
    max_prefill_chunk: int = 128  # bounds q of a prefill call
    k_max: int = 32  # children per draft row in topk_*; >= the widest layer a policy asks for
    # target attention: ort (ORT only: fused ops, row-invariant attention, so speculative output equals
    # `ar`'s on every kind of weights; the draft is gqa) | gqa (ORT only, GroupQueryAttention writes KV
    # in place; its one-row path rounds apart from its many-row one) | standard (standard ops: TensorRT)
    flavour: str = "ort"
    # draft and draft_fc MatMul weights: float (dtype) | int8 | int4 (ORT MatMulNBits; lossless: the target
    # verifies every draft token; export/quantize.py); None: DRAFT_WEIGHTS where they apply, else float
    draft_weights: str | None = None
    # target MatMul, LM head and embedding weights: float (dtype) | int8 | int4 (ORT MatMulNBits /
    # GatherBlockQuantized: a smaller, faster target that is a different model; export/quantize.py)
    target_weights: str = "float"
    # a quantised target's MatMulNBits activations: int8 (fast kernels; speculative output can leave
    # `ar`'s where one-row and many-row kernels round apart) | float (speculative
    # output equals `ar`'s; ~1.4-1.7x the call cost on the 2-core CPU). export/quantize.py
    target_compute: str = "int8"
    # manifest defaults to set instead of default_run_settings' values, as (key, value) pairs
    # (`--default budget=8`: a budget sweep's answer for the machine the engine is built for)
    defaults: tuple[tuple[str, object], ...] = ()

    def check(self) -> None:
        if self.dtype not in onnx_graphs.DTYPES:
            raise ExportError(f"--dtype {self.dtype!r}: expected one of {', '.join(onnx_graphs.DTYPES)}")
        if self.flavour not in onnx_graphs.FLAVOURS:
            raise ExportError(f"--flavour {self.flavour!r}: expected one of {', '.join(onnx_graphs.FLAVOURS)}")
        for role in ("draft", "target"):
            if getattr(self, f"{role}_weights") is not None:
                self._check_weights(role, getattr(self, f"{role}_weights"))
        if self.target_compute not in quantize.COMPUTE:
            raise ExportError(f"--target-compute {self.target_compute!r}: expected one of {', '.join(quantize.COMPUTE)}")
        known = default_run_settings(ExportOptions())
        for key, value in self.defaults:
            if key not in known:
                raise ExportError(f"--default {key}={value}: unknown key (expected one of {', '.join(known)})")
            if type(value) is not type(known[key]) and not (isinstance(known[key], float) and type(value) is int):
                raise ExportError(f"--default {key}={value}: expected a {type(known[key]).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ExportError(f"--default {key}={value}: not a finite number")
            if key == "budget" and not 1 <= value <= self.max_tree_tokens:
                raise ExportError(f"--default budget={value}: outside [1, --max-tree-tokens {self.max_tree_tokens}]")
        for name in ("max_seq_len", "max_tree_tokens", "max_prefill_chunk", "k_max"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_tree_tokens", "max_prefill_chunk"):
            if self.max_seq_len is not None and getattr(self, name) > self.max_seq_len:
                raise ExportError(f"--{name.replace('_', '-')} {getattr(self, name)} exceeds "
                                  f"--max-seq-len {self.max_seq_len}")


    def _check_weights(self, role: str, weights: str) -> None:
        """--{role}-weights: a known format; a quantised one needs fp32 graphs of an ORT flavour."""
        if weights not in quantize.WEIGHTS:
            raise ExportError(f"--{role}-weights {weights!r}: expected one of {', '.join(quantize.WEIGHTS)}")
        if weights != "float" and self.dtype != "float32":
            raise ExportError(f"--{role}-weights {weights} needs --dtype float32, got {self.dtype}")
        if weights != "float" and self.flavour not in onnx_graphs.ORT_FLAVOURS:
            raise ExportError(f"--{role}-weights {weights} needs --flavour ort or gqa (ONNX Runtime only; "
                              f"TensorRT plans need float {role} weights)")


# the draft's weights when --draft-weights is left out, for a float32 ORT-flavour engine: SmolLM2's head keeps its
# acceptance (tau within 1 % of float's) at about a third of the float draft call; int4 loses 2-4 % of tau
DRAFT_WEIGHTS = "int8"


def default_draft_weights(opts: ExportOptions) -> str:
    """opts.draft_weights, or DRAFT_WEIGHTS where quantised weights can go (float32, an ORT flavour), else float."""
    if opts.draft_weights is not None:
        return opts.draft_weights
    return DRAFT_WEIGHTS if opts.dtype == "float32" and opts.flavour in onnx_graphs.ORT_FLAVOURS else "float"


def draft_flavour(flavour: str) -> str:
    """The draft graph's flavour for an export `flavour`: the draft only proposes tokens, so an ort
    engine keeps the cheaper in-place gqa draft."""
    return "gqa" if flavour == "ort" else flavour


# the most target KV cache (K and V of every layer, in the engine's dtype) an automatic context may cost
CONTEXT_KV_BYTES = 1 << 30
# contexts are whole multiples of this many rows; the model's context when it is smaller
CONTEXT_STEP = 256
# the context of a model whose config names none (transformers' LlamaConfig default)
FALLBACK_CONTEXT = 2048


def auto_max_seq_len(tc, itemsize: int, floor: int) -> tuple[int, str]:
    """(S, why): the model's context (max_position_embeddings / a GGUF's context_length) capped so the
    target's KV cache stays within CONTEXT_KV_BYTES (rounded down to CONTEXT_STEP rows), never below
    `floor` (the largest call)."""
    trained = tc.context_length or FALLBACK_CONTEXT
    row = cache_bytes(tc.num_layers, tc.num_kv_heads, 1, tc.head_dim, itemsize)
    fits = CONTEXT_KV_BYTES // row // CONTEXT_STEP * CONTEXT_STEP
    S = max(min(trained, fits), floor)
    named = (f"the model's context {tc.context_length}" if tc.context_length else
             f"no context in the model's config, {FALLBACK_CONTEXT} assumed")
    why = (f"max_seq_len {S}: {named}, capped at {fits} rows = {CONTEXT_KV_BYTES >> 20} MiB of target KV cache "
           f"({row} B per row); --max-seq-len overrides it; KV cache {cache_bytes(tc.num_layers, tc.num_kv_heads, S, tc.head_dim, itemsize) / 2**20:.0f} MiB")
    return S, why


def default_run_settings(opts: ExportOptions) -> dict:
    """manifest `defaults`: what the runtime uses for an option the caller leaves out (`opts.defaults`
    override these)."""
    return {**_builtin_settings(opts), **dict(opts.defaults)}


def _builtin_settings(opts: ExportOptions) -> dict:
    return {
        "policy": ENGINE_DEFAULT,
        **{k.option: k.default for k in KNOBS},   # talon/policies.py: each default's reason
        BUDGET.option: min(BUDGET.default, opts.max_tree_tokens),
        "max_new_tokens": -1,  # until the end of the turn or a full context (talon_rt.runtime.options.UNTIL_STOP)
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
    }


def export_engine(model_dir: str | Path, draft_dir: str | Path | None, out_dir: str | Path,
                  opts: ExportOptions = ExportOptions(), name: str | None = None, force: bool = False,
                  check: bool = False, log: Callable[[str], None] = lambda msg: None) -> Path:
    """Build the engine directory `out_dir`; returns its path. `log` receives one line per stage.

    draft_dir None: a target-only engine (no draft graphs, `draft: null`, default policy ar).
    check: run the graphs once through ORT against the reference modules (talon_rt.export.check) before the
    directory is moved into place; a failure leaves nothing behind.
    """
    opts.check()
    opts = replace(opts, draft_weights=default_draft_weights(opts))
    model_dir = Path(model_dir)
    draft_dir = None if draft_dir is None else Path(draft_dir)
    if draft_dir is not None and not draft_dir.is_dir():
        raise CheckpointError(f"--draft {draft_dir}: not a directory")
    out_dir = _safe_out_dir(Path(out_dir), (model_dir, draft_dir), force)
    _remove_stale_temps(out_dir)
    source = _open_source(model_dir)
    stage = _stage_log(log)
    with torch.no_grad():
        target, opts = _load_target(source, draft_dir, opts, stage, log)
        head = _load_head(draft_dir, target, opts, stage, log)
        _check_kv_fits(target.config, opts)
        tmp = None
        try:
            with signals_held():    # a signal lands after the temp dir has a name the cleanup below sees
                tmp = _temp_dir_beside(out_dir)
            target_quant, draft_quant = _quantizers(opts, source)
            files = _write_graphs(tmp, target, head, opts, target_quant, draft_quant, stage, log)
            _write_tokenizer_and_manifest(tmp, source, target, head, opts, files, target_quant,
                                          name or out_dir.name, stage)
            if check:
                _check_against_reference(tmp, target, head, target_quant, stage)
            _replace_dir(tmp, out_dir)
        except BaseException:
            with signals_held():    # a second signal must not cut the removal short
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"engine directory ready: {out_dir}")
    return out_dir


Stage = Callable[[str, float], None]


def _stage_log(log: Callable[[str], None]) -> Stage:
    """stage(msg, t0): one log line with the seconds since t0."""
    def stage(msg: str, t0: float) -> None:
        log(f"{msg} ({time.perf_counter() - t0:.1f} s)")
    return stage


def _open_source(model_dir: Path):
    source = checkpoints.open_source(model_dir)
    if isinstance(source, checkpoints.HFFolder) and not (model_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{model_dir / 'tokenizer.json'}: not found (the engine needs a tokenizers-format "
                              f"tokenizer.json)")
    return source


def _load_target(source, draft_dir: Path | None, opts: ExportOptions, stage: Stage,
                 log: Callable[[str], None]) -> tuple[Target, ExportOptions]:
    """The target model (with the feature taps the draft head reads) and `opts` with its max_seq_len."""
    t0 = time.perf_counter()
    head_cfg = (None if draft_dir is None else
                HeadConfig.from_hf(checkpoints.read_config(draft_dir), str(draft_dir / "config.json")))
    # fp16 engines: load in fp16 (half the memory of a large model; the graph weights are the same)
    target = checkpoints.load_target(source, feature_layers=head_cfg.feature_layers if head_cfg else None,
                                     dtype=torch.float16 if opts.dtype == "float16" else torch.float32)
    tc = target.config
    stage(f"loaded target {tc.architecture} from {_describe(source.description())}: {tc.num_layers} layers, hidden {tc.hidden_size}, "
          f"vocab {tc.vocab_size}, taps {list(tc.feature_layers)}", t0)
    if opts.max_seq_len is None:
        S, why = auto_max_seq_len(tc, torch.finfo(getattr(torch, opts.dtype)).bits // 8,
                                  max(opts.max_tree_tokens, opts.max_prefill_chunk))
        opts = replace(opts, max_seq_len=S)
        log(why)
    return target, opts


def _load_head(draft_dir: Path | None, target: Target, opts: ExportOptions, stage: Stage,
               log: Callable[[str], None]) -> Eagle3Head | None:
    t0 = time.perf_counter()
    head = None if draft_dir is None else checkpoints.load_head(draft_dir, target)
    if head is None:
        log("no --draft: a target-only engine (policy ar)")
    else:
        stage(f"loaded EAGLE-3 head: draft vocab {head.config.draft_vocab_size}, "
              f"{'own' if head.embed_tokens is not None else 'target'} embedding", t0)
    if head is not None and opts.k_max > head.config.draft_vocab_size:
        raise ExportError(f"--k-max {opts.k_max} exceeds the head's draft_vocab_size {head.config.draft_vocab_size}")
    return head


def _check_kv_fits(tc, opts: ExportOptions) -> None:
    try:
        check_fits_memory(cache_bytes(tc.num_layers, tc.num_kv_heads, opts.max_seq_len, tc.head_dim,
                                      torch.finfo(getattr(torch, opts.dtype)).bits // 8),
                          f"--max-seq-len {opts.max_seq_len}")
    except EngineError as e:
        raise ExportError(str(e)) from None


def _temp_dir_beside(out_dir: Path) -> Path:
    """A new directory beside `out_dir` that `_remove_stale_temps` recognises."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
        tmp.chmod(0o755)
    except OSError as e:
        raise ExportError(f"--out {out_dir}: cannot create a directory beside it ({e.strerror})") from None
    return tmp


def _quantizers(opts: ExportOptions, source) -> tuple[quantize.WeightQuantizer | None, quantize.WeightQuantizer | None]:
    """(target, draft) weight quantizers; None where the weights stay float."""
    # a GGUF source offers its own blocks (export/gguf_blocks.py keeps those that are exact)
    target_quant = (None if opts.target_weights == "float" else
                    quantize.WeightQuantizer(opts.target_weights, getattr(source, "raw_blocks", None),
                                             opts.target_compute))
    draft_quant = None if opts.draft_weights == "float" else quantize.WeightQuantizer(opts.draft_weights)
    return target_quant, draft_quant


def _write_graphs(tmp: Path, target: Target, head: Eagle3Head | None, opts: ExportOptions,
                  target_quant: quantize.WeightQuantizer | None, draft_quant: quantize.WeightQuantizer | None,
                  stage: Stage, log: Callable[[str], None]) -> list[Path]:
    """Build and save every graph into `tmp`; returns the files written (graphs and external data)."""
    files: list[Path] = []
    fc_quant = None if draft_quant is None else quantize.WeightQuantizer(opts.draft_weights)
    graphs = [("target.onnx", lambda: onnx_graphs.build_target(target, opts.dtype, opts.max_seq_len,
                                                               opts.flavour, target_quant), target_quant)]
    if head is not None:
        graphs += [
            ("draft_fc.onnx", lambda: onnx_graphs.build_draft_fc(head, opts.dtype, fc_quant), fc_quant),
            ("draft.onnx", lambda: onnx_graphs.build_draft(head, opts.dtype, opts.max_seq_len, opts.k_max,
                                                           draft_flavour(opts.flavour), draft_quant,
                                                           _target_embedding(head, tmp)),
             draft_quant)]
    for fname, build, quant in graphs:
        t0 = time.perf_counter()
        written = onnx_graphs.save(build(), tmp / fname)
        files += written
        stage(f"wrote {', '.join(p.name for p in written)} "
              f"({sum(p.stat().st_size for p in written) / 1e6:.1f} MB, "
              f"{opts.dtype if quant is None else quant.summary()})", t0)
        for line in quant.storage_lines() if quant is not None else ():
            log(f"  {line}")
    return files


def _write_tokenizer_and_manifest(tmp: Path, source, target: Target, head: Eagle3Head | None,
                                  opts: ExportOptions, files: list[Path],
                                  target_quant: quantize.WeightQuantizer | None, name: str, stage: Stage) -> None:
    t0 = time.perf_counter()
    source.write_tokenizer(tmp / "tokenizer.json")
    files.append(tmp / "tokenizer.json")
    tokenizer = tokenizer_record(source, tmp / "tokenizer.json", target.config.vocab_size)
    manifest = _manifest(name, target, head, opts, tokenizer, files, generation_defaults(source))
    manifest["source"] = source.description()
    if target_quant is not None:   # which target weights kept a checkpoint's blocks, which were quantised
        manifest["model"]["quantization"] = target_quant.record()
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    verify_engine_dir(tmp)
    chat = "chat template, stop ids " + str(tokenizer["stop_ids"]) if tokenizer["chat_template"] else "no chat template"
    stage(f"wrote tokenizer.json ({chat}), manifest.json (sha256 of every file)", t0)


def _check_against_reference(tmp: Path, target: Target, head: Eagle3Head | None,
                             target_quant: quantize.WeightQuantizer | None, stage: Stage) -> None:
    from talon_rt.export.check import check_engine
    t0 = time.perf_counter()
    # a quantised target is checked against the float model of its own blocks
    reference = target if target_quant is None else target_quant.dequantized(target)
    r = check_engine(tmp, reference, _reading_target_embedding(head, reference))
    stage(f"checked against the reference: target max |diff| {r['target_max_abs_diff']:.1e} "
          f"(top-1 {r['target_top1']:.0%})" + (
              f", draft max |diff| {r['draft_max_abs_diff']:.1e} (top-1 {r['draft_top1']:.0%})"
              if head is not None else ""), t0)


def _target_embedding(head, engine_dir: Path) -> onnx_graphs.TargetEmbedding | None:
    """What the draft reads for its embedding: the written target's own initializers (no copy), unless
    the head has an embedding of its own."""
    return None if head.embed_tokens is not None else onnx_graphs.target_embedding(engine_dir / "target.onnx")


def _reading_target_embedding(head, target):
    """`head` reading `target`'s embedding (a quantised target's dequantised blocks), as draft.onnx does."""
    if head is not None and head.embed_tokens is None:
        head.set_embedding(target.model.embed_tokens.weight.detach())
    return head


def generation_defaults(source) -> dict:
    """The model's own sampling defaults (HF generation_config.json) for the manifest's `defaults`."""
    return source.sampling_defaults()


def tokenizer_record(source, tokenizer_file: Path, vocab_size: int) -> dict:
    """The manifest's `tokenizer` object: file, special ids, the chat template and the ids generation
    stops at (eos + the template's end-of-turn token)."""
    from tokenizers import Tokenizer
    from talon_rt.runtime.chat import end_of_turn, render_chat
    special = source.special_tokens(vocab_size)
    template = source.chat_template
    stop = list(special["eos_ids"])
    if template is not None:
        tok = Tokenizer.from_file(str(tokenizer_file))
        name = lambda i: tok.id_to_token(i) if i is not None else ""   # noqa: E731
        try:
            eot = end_of_turn(template, tok, name(special["bos_id"]), name(stop[0] if stop else None))
            render_chat(template, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                        name(special["bos_id"]), name(stop[0] if stop else None))
        except Exception as e:  # the template is the model's: any failure to render it is the model's
            raise CheckpointError(f"{source.path}: chat template does not render ({type(e).__name__}: {e})") from None
        if eot is not None and eot not in stop:
            stop.append(eot)
    return {"file": "tokenizer.json", **special, "chat_template": template, "stop_ids": stop}


def _describe(src: dict) -> str:
    return f"{src['format'].upper()} {src['name']}" + (f" ({src['quantization']})" if src.get("quantization") else "")


def _manifest(name: str, target, head, opts: ExportOptions, tokenizer: dict, files: list[Path],
              sampling: dict | None = None) -> dict:
    """head None: a target-only engine (`draft: null`, the target graph alone, default policy ar).
    sampling: the model's own sampling defaults (generation_defaults), over the built-in ones."""
    tc = target.config
    hc = head.config if head is not None else None
    defaults = {**default_run_settings(opts), **(sampling or {}), **dict(opts.defaults)}
    if head is None:
        defaults["policy"] = BASELINE
    roles = ROLES if head is not None else ("target",)
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_by": CREATED_BY,
        "model": {"architecture": tc.architecture, "vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size,
                  "num_layers": tc.num_layers, "num_heads": tc.num_heads, "num_kv_heads": tc.num_kv_heads,
                  "head_dim": tc.head_dim, "feature_layers": list(tc.feature_layers), "dtype": opts.dtype,
                  "weights": opts.target_weights,
                  "compute": "float" if opts.target_weights == "float" else opts.target_compute},
        "draft": None if hc is None else {
            "hidden_size": hc.hidden_size, "num_heads": hc.num_heads, "num_kv_heads": hc.num_kv_heads,
            "head_dim": hc.head_dim, "draft_vocab_size": hc.draft_vocab_size, "k_max": opts.k_max,
            "weights": opts.draft_weights},
        "tokenizer": tokenizer,
        "limits": {"max_seq_len": opts.max_seq_len, "max_tree_tokens": opts.max_tree_tokens,
                   "max_prefill_chunk": opts.max_prefill_chunk},
        "defaults": defaults,
        # draft_fc has no attention: always standard ops
        "graphs": {role: {"file": f"{role}.onnx", "flavour": {"draft_fc": "standard", "draft": draft_flavour(opts.flavour)}.get(role, opts.flavour)}
                   for role in roles},
        "files": {p.name: file_record(p) for p in sorted(files, key=lambda p: p.name)},
    }


def _safe_out_dir(out_dir: Path, inputs: tuple[Path | None, ...], force: bool) -> Path:
    """The absolute --out path, if exporting there can lose nothing: it does not exist, or (with
    force) it is an engine directory this project wrote that neither is nor contains an input."""
    out = Path(os.path.abspath(out_dir))
    if not out.name or out.parent == out:
        raise ExportError(f"--out {out_dir}: not a directory the export can create or replace")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"--out {out_dir}: {parent} is not a directory")
    if not (out.exists() or out.is_symlink()):
        return out
    if not force:
        raise ExportError(f"{out_dir}: already exists (use --force to replace it)")
    real = out.resolve()
    for label, d in zip(("--model", "--draft"), inputs):
        if d is None:
            continue
        src = d.resolve()
        if real == src or real in src.parents:
            raise ExportError(f"--out {out_dir}: {'is' if real == src else 'contains'} the {label} folder "
                              f"{d}; --force only replaces an engine directory, nothing was deleted")
    created_by = None
    if out.is_dir() and not out.is_symlink() and (out / MANIFEST).is_file():
        try:
            created_by = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("created_by")
        except (ValueError, RecursionError, AttributeError, OSError):
            created_by = None
    if not (isinstance(created_by, str) and created_by.startswith(CREATED_BY.split()[0] + " ")):
        raise ExportError(f"--out {out_dir}: exists and is not an engine directory written by "
                          f"{CREATED_BY.split()[0]} (no {MANIFEST} with created_by {CREATED_BY.split()[0]!r}); "
                          f"--force only replaces one of those, nothing was deleted")
    return out


def _temp_prefix(out_dir: Path) -> str:
    """Temp dirs of an export to `out_dir` are `.<name>.tmp-<pid>-<random>` beside it."""
    return f".{out_dir.name}.tmp-"


def _remove_stale_temps(out_dir: Path) -> None:
    """Remove temp dirs (and replaced dirs) of earlier exports to `out_dir` whose process is gone
    (killed by SIGKILL, or the machine went down)."""
    if not out_dir.parent.is_dir():
        return
    # a replaced dir is the only copy while out_dir is missing (killed between the two renames)
    prefixes = (_temp_prefix(out_dir),) + ((f".{out_dir.name}.old-",) if out_dir.exists() else ())
    for prefix in prefixes:
        for p in out_dir.parent.glob(glob.escape(prefix) + "*"):
            pid = p.name[len(prefix):].split("-")[0]
            if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):   # no such process; a pid no process can have
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished temp dir to out_dir; an existing out_dir is only removed once tmp is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
