"""Read and check an engine directory's manifest and files (docs/engine-format.md, format_version 1).

`open_manifest(dir)` checks, in order: the directory, manifest.json (JSON, schema, format_version),
every file name (plain, inside the directory, no symlink), every external-data file a graph
references (listed in `files`), every file's size and sha256, and that the KV caches fit this
machine's memory. `check_graph_io(manifest, role, inputs, outputs)` checks a graph's declared I/O
against the dims. Every failure is an EngineError naming the file and the field. runtime/validate.py
adds the checks that need the options and the tokenizer; that is the one validator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.digest import memoized, sha256_file
from runtime.errors import EngineError
from runtime.onnx_refs import MalformedModel, external_files

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROLES = ("target", "draft_fc", "draft")
DRAFT_ROLES = ("draft_fc", "draft")   # absent together from a target-only engine (no EAGLE-3 head)
KV_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class ModelDims:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    feature_layers: tuple[int, ...]
    dtype: str
    weights: str = "float"  # float | int8 | int4: the target graph's weight format (MatMulNBits)
    # activations its MatMulNBits compute with: int8 (fast; speculative output may leave `ar`'s where
    # the one-row and many-row kernels round apart) | float (speculative output equals `ar`'s)
    compute: str = "float"


@dataclass(frozen=True)
class DraftDims:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    draft_vocab_size: int
    k_max: int
    weights: str = "float"   # draft graphs' MatMul weights: float | int8 | int4 (ORT MatMulNBits)


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    chat_template: str | None = None  # Jinja2, rendered by runtime/chat.py; None: no chat template
    stop_ids: tuple[int, ...] = ()  # generation stops at any of these: eos_ids + the end-of-turn token


@dataclass(frozen=True)
class Limits:
    max_seq_len: int
    max_tree_tokens: int
    max_prefill_chunk: int


# "standard": standard ONNX ops, returns the q new K/V rows; "gqa": GroupQueryAttention writes them
# into the bound cache in place (ORT only); "ort": ORT's fused ops with row-invariant attention, returns
# the new rows (target only). draft_fc has no attention.
DRAFT_WEIGHTS = ("float", "int8", "int4")
TARGET_COMPUTE = ("int8", "float")  # a quantised target's MatMulNBits activations (model.compute)
FLAVOURS = {"target": ("standard", "gqa", "ort"), "draft_fc": ("standard",), "draft": ("standard", "gqa")}


@dataclass(frozen=True)
class GraphEntry:
    file: str
    flavour: str


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    dir: Path
    name: str
    created_by: str
    model: ModelDims
    draft: DraftDims | None         # None: a target-only engine (no draft head; policy ar only)
    tokenizer: TokenizerInfo
    limits: Limits
    defaults: Mapping[str, Any]
    graphs: Mapping[str, GraphEntry]
    files: Mapping[str, FileEntry]
    raw: Mapping[str, Any]          # manifest.json as read (export.trt rewrites it)
    # where the target came from: {"format": "gguf" | "hf", "name": ..., "quantization": ...}
    source: Mapping[str, Any] | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        """The graphs this engine has: every role, or the target alone."""
        return tuple(r for r in ROLES if r in self.graphs)

    @property
    def kv_dtype(self) -> type:
        return KV_DTYPES[self.model.dtype]

    @property
    def feature_size(self) -> int:
        return len(self.model.feature_layers) * self.model.hidden_size

    def path(self, file: str) -> Path:
        return self.dir / file

    def plan(self, role: str) -> Path | None:
        """The TensorRT plan of a graph if the manifest lists one (`<role>.plan`)."""
        name = f"{role}.plan"
        return self.dir / name if name in self.files else None


# ---------------------------------------------------------------------------------------------------
# schema


def _err(field: str, msg: str) -> EngineError:
    return EngineError(f"{MANIFEST}: {field}: {msg}")


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         optional: bool = False) -> Any:
    field = f"{where}.{key}" if where else key
    if key not in obj:
        if optional:
            return None
        raise _err(field, "missing")
    value = obj[key]
    if optional and value is None:
        return None
    # bool is an int subclass; a flag is never a valid dim
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _err(field, f"expected {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise _err(field, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object",
             list: "a list", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(obj, key, int, where)
    if value <= 0:
        raise _err(f"{where}.{key}", f"must be a positive integer, got {value}")
    return value


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _get(raw, key, dict, "")


def _parse_model(raw: Mapping[str, Any]) -> ModelDims:
    m = _section(raw, "model")
    layers = _get(m, "feature_layers", list, "model")
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise _err("model.feature_layers", f"expected a non-empty list of integers, got {layers!r}")
    num_layers = _positive(m, "num_layers", "model")
    bad = [i for i in layers if not 0 <= i <= num_layers]
    if bad:
        raise _err("model.feature_layers", f"{bad} outside [0, num_layers={num_layers}]")
    dtype = _get(m, "dtype", str, "model")
    if dtype not in KV_DTYPES:
        raise _err("model.dtype", f"unsupported {dtype!r} (expected one of {sorted(KV_DTYPES)})")
    dims = ModelDims(
        architecture=_get(m, "architecture", str, "model"),
        vocab_size=_positive(m, "vocab_size", "model"),
        hidden_size=_positive(m, "hidden_size", "model"),
        num_layers=num_layers,
        num_heads=_positive(m, "num_heads", "model"),
        num_kv_heads=_positive(m, "num_kv_heads", "model"),
        head_dim=_positive(m, "head_dim", "model"),
        feature_layers=tuple(layers),
        dtype=dtype,
        weights=_get(m, "weights", str, "model", optional=True) or "float",
    )
    if dims.weights not in DRAFT_WEIGHTS:
        raise _err("model.weights", f"{dims.weights!r} is not one of {', '.join(DRAFT_WEIGHTS)}")
    compute = _get(m, "compute", str, "model", optional=True) or ("float" if dims.weights == "float" else "int8")
    if compute not in TARGET_COMPUTE or (dims.weights == "float" and compute != "float"):
        allowed = TARGET_COMPUTE if dims.weights != "float" else ("float",)
        raise _err("model.compute", f"{compute!r} is not one of {', '.join(allowed)} "
                                    f"(model.weights {dims.weights})")
    dims = replace(dims, compute=compute)
    if dims.num_heads % dims.num_kv_heads:
        raise _err("model.num_kv_heads", f"{dims.num_kv_heads} does not divide num_heads={dims.num_heads}")
    return dims


def _parse_draft(raw: Mapping[str, Any], model: ModelDims) -> DraftDims | None:
    if "draft" not in raw:
        raise _err("draft", "missing (null for a target-only engine)")
    d = _get(raw, "draft", dict, "", optional=True)
    if d is None:
        return None
    dims = DraftDims(
        hidden_size=_positive(d, "hidden_size", "draft"),
        num_heads=_positive(d, "num_heads", "draft"),
        num_kv_heads=_positive(d, "num_kv_heads", "draft"),
        head_dim=_positive(d, "head_dim", "draft"),
        draft_vocab_size=_positive(d, "draft_vocab_size", "draft"),
        k_max=_positive(d, "k_max", "draft"),
        weights=_get(d, "weights", str, "draft", optional=True) or "float",
    )
    if dims.weights not in DRAFT_WEIGHTS:
        raise _err("draft.weights", f"{dims.weights!r} is not one of {', '.join(DRAFT_WEIGHTS)}")
    if dims.hidden_size != model.hidden_size:
        raise _err("draft.hidden_size", f"{dims.hidden_size} != model.hidden_size={model.hidden_size}")
    if dims.draft_vocab_size > model.vocab_size:
        raise _err("draft.draft_vocab_size", f"{dims.draft_vocab_size} > model.vocab_size={model.vocab_size}")
    if dims.k_max > dims.draft_vocab_size:
        raise _err("draft.k_max", f"{dims.k_max} > draft_vocab_size={dims.draft_vocab_size}")
    return dims


def _token_id(obj: Mapping[str, Any], key: str, vocab: int, optional: bool) -> int | None:
    value = _get(obj, key, int, "tokenizer", optional=optional)
    if value is not None and not 0 <= value < vocab:
        raise _err(f"tokenizer.{key}", f"{value} outside the vocabulary [0, {vocab})")
    return value


def _parse_tokenizer(raw: Mapping[str, Any], vocab: int) -> TokenizerInfo:
    t = _section(raw, "tokenizer")
    eos = _get(t, "eos_ids", list, "tokenizer")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in eos):
        raise _err("tokenizer.eos_ids", f"expected token ids in [0, {vocab}), got {eos!r}")
    stop = _get(t, "stop_ids", list, "tokenizer", optional=True) or []
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in stop):
        raise _err("tokenizer.stop_ids", f"expected token ids in [0, {vocab}), got {stop!r}")
    template = t.get("chat_template")
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise _err("tokenizer.chat_template", f"expected a Jinja2 template string or null, got {template!r:.80}")
    return TokenizerInfo(
        file=_get(t, "file", str, "tokenizer"),
        bos_id=_token_id(t, "bos_id", vocab, optional=True),
        eos_ids=tuple(eos),
        pad_id=_token_id(t, "pad_id", vocab, optional=True),
        chat_template=template,
        stop_ids=tuple(dict.fromkeys([*eos, *stop])),
    )


def _parse_source(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    src = _get(raw, "source", dict, "", optional=True)
    if src is None:
        return None
    for key in ("format", "name"):
        _get(src, key, str, "source")
    if src.get("quantization") is not None and not isinstance(src["quantization"], str):
        raise _err("source.quantization", f"expected a string or null, got {src['quantization']!r}")
    return dict(src)


def _parse_limits(raw: Mapping[str, Any]) -> Limits:
    lim = _section(raw, "limits")
    limits = Limits(
        max_seq_len=_positive(lim, "max_seq_len", "limits"),
        max_tree_tokens=_positive(lim, "max_tree_tokens", "limits"),
        max_prefill_chunk=_positive(lim, "max_prefill_chunk", "limits"),
    )
    for key in ("max_tree_tokens", "max_prefill_chunk"):
        if getattr(limits, key) > limits.max_seq_len:
            raise _err(f"limits.{key}", f"{getattr(limits, key)} > max_seq_len={limits.max_seq_len}")
    return limits


def _parse_graphs(raw: Mapping[str, Any], has_draft: bool) -> dict[str, GraphEntry]:
    """Every role's graph; only the target's when the manifest's `draft` is null."""
    g = _section(raw, "graphs")
    graphs = {}
    if not has_draft:
        extra = [r for r in DRAFT_ROLES if r in g]
        if extra:
            raise _err(f"graphs.{extra[0]}", "present, but draft is null (a target-only engine has no draft graphs)")
    for role in ROLES if has_draft else ("target",):
        entry = _get(g, role, dict, "graphs")
        flavour = _get(entry, "flavour", str, f"graphs.{role}")
        known = FLAVOURS[role]
        if flavour not in known:
            raise _err(f"graphs.{role}.flavour", f"unsupported {flavour!r} (this runtime reads "
                                                 f"{' or '.join(repr(f) for f in known)})")
        graphs[role] = GraphEntry(file=_get(entry, "file", str, f"graphs.{role}"), flavour=flavour)
    return graphs


def _parse_files(raw: Mapping[str, Any]) -> dict[str, FileEntry]:
    f = _section(raw, "files")
    files = {}
    for name, entry in f.items():
        if not isinstance(entry, dict):
            raise _err(f"files.{name}", f"expected an object, got {entry!r}")
        digest = _get(entry, "sha256", str, f"files.{name}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise _err(f"files.{name}.sha256", f"not a sha256 hex digest: {digest!r}")
        size = _get(entry, "bytes", int, f"files.{name}")
        if size < 0:
            raise _err(f"files.{name}.bytes", f"negative size {size}")
        files[name] = FileEntry(sha256=digest.lower(), bytes=size)
    return files


# ---------------------------------------------------------------------------------------------------
# files


def _check_name(root: Path, name: str, field: str) -> Path:
    """A manifest file name must be a plain name of a regular file inside the directory."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or os.path.isabs(name) or ":" in name):
        raise _err(field, f"{name!r} is not a plain file name inside the engine directory")
    path = root / name
    if path.is_symlink():
        raise _err(field, f"{name!r} is a symbolic link; engine files must be regular files")
    if path.exists() and path.resolve().parent != root.resolve():
        raise _err(field, f"{name!r} resolves outside the engine directory")
    return path


def _external_data(root: Path, graph: str) -> list[str]:
    """The external-data files `graph` references (names as written in the graph)."""
    path = root / graph
    if not path.is_file():
        raise EngineError(f"{path}: missing (listed in {MANIFEST} graphs)")
    try:
        return memoized("onnx-external-data", path, external_files)
    except MalformedModel as e:
        # what onnxruntime's protobuf parser would refuse as well
        raise EngineError(f"{path}: onnxruntime cannot load the graph: not a well-formed ONNX protobuf "
                          f"({e})") from None


def _check_references(root: Path, files: Mapping[str, FileEntry], referenced: Mapping[str, str]) -> None:
    """Every file the manifest names is a plain name listed in `files`."""
    for field, name in referenced.items():
        _check_name(root, name, field)
        if name not in files:
            raise _err(field, f"{name!r} is not listed in 'files' (every engine file needs a checksum)")


def _check_external_data(root: Path, files: Mapping[str, FileEntry], graphs: Mapping[str, GraphEntry]) -> None:
    """Every external-data file a graph references is listed in `files` (so it was checksummed)."""
    for role, g in graphs.items():
        for name in _external_data(root, g.file):
            _check_name(root, name, f"graphs.{role}.file {g.file!r} external data")
            if name not in files:
                raise EngineError(f"{root / g.file}: references external data {name!r}, which is not listed "
                                  f"in {MANIFEST} files (every engine file needs a checksum)")


def _check_files(root: Path, files: Mapping[str, FileEntry]) -> None:
    for name, entry in files.items():
        path = _check_name(root, name, f"files.{name}")
        if not path.is_file():
            raise EngineError(f"{root / name}: missing (listed in {MANIFEST} files)")
        size = path.stat().st_size
        if size != entry.bytes:
            raise EngineError(f"{root / name}: size {size} bytes != {MANIFEST} files.{name}.bytes={entry.bytes}")
    for name, entry in files.items():     # sizes first: a truncated copy fails before any hashing
        digest = sha256_file(root / name)
        if digest != entry.sha256:
            raise EngineError(f"{root / name}: checksum mismatch (sha256 {digest[:16]}... != "
                              f"{MANIFEST} files.{name}.sha256 {entry.sha256[:16]}...)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EngineError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise EngineError(f"{path}: not UTF-8 text ({e.reason})") from None
    except RecursionError:
        raise EngineError(f"{path}: invalid JSON: nested too deeply") from None
    except OSError as e:
        raise EngineError(f"{path}: cannot read ({e.strerror})") from None


def open_manifest(engine_dir: str | os.PathLike[str], verify_checksums: bool = True) -> Manifest:
    """Read and validate `engine_dir/manifest.json` and the files it lists.

    verify_checksums=False skips what reads file contents (external-data references, sizes, sha256,
    memory): for a quick summary only, never before loading."""
    if not isinstance(engine_dir, (str, os.PathLike)):
        raise EngineError(f"engine directory: expected a path, got {type(engine_dir).__name__} {engine_dir!r:.80}")
    root = Path(engine_dir)
    if not root.is_dir():
        raise EngineError(f"engine directory not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        raise EngineError(f"{path}: missing (not an engine directory?)")
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise EngineError(f"{path}: expected a JSON object at the top level")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise _err("format_version", f"unsupported value {version!r} (this runtime reads {FORMAT_VERSION})")

    model = _parse_model(raw)
    tokenizer = _parse_tokenizer(raw, model.vocab_size)
    draft = _parse_draft(raw, model)
    graphs = _parse_graphs(raw, draft is not None)
    files = _parse_files(raw)
    defaults = _get(raw, "defaults", dict, "")
    manifest = Manifest(
        dir=root, name=_get(raw, "name", str, ""), created_by=str(raw.get("created_by", "")),
        model=model, draft=draft, tokenizer=tokenizer, limits=_parse_limits(raw),
        defaults=dict(defaults), graphs=graphs, files=files, raw=raw, source=_parse_source(raw),
    )
    referenced = {f"graphs.{r}.file": g.file for r, g in graphs.items()}
    referenced["tokenizer.file"] = tokenizer.file
    _check_references(root, files, referenced)
    if verify_checksums:
        _check_files(root, files)
        _check_external_data(root, files, graphs)
        check_fits_memory(sum(kv_buffers(manifest).values()),
                          f"{path}: limits.max_seq_len={manifest.limits.max_seq_len}")
    return manifest


# ---------------------------------------------------------------------------------------------------
# memory


def cache_bytes(layers: int, kv_heads: int, rows: int, head_dim: int, itemsize: int) -> int:
    """Bytes of K and V for `layers` layers of `rows` rows: 2 * layers * [kv_heads, rows, head_dim]."""
    return 2 * layers * kv_heads * rows * head_dim * itemsize


def kv_buffers(m: Manifest) -> dict[str, int]:
    """Bytes of the K/V buffers a backend allocates for this manifest."""
    md, dd, S = m.model, m.draft, m.limits.max_seq_len
    q_max = max(m.limits.max_tree_tokens, m.limits.max_prefill_chunk)
    item = np.dtype(m.kv_dtype).itemsize
    bufs = {"target_cache": cache_bytes(md.num_layers, md.num_kv_heads, S, md.head_dim, item)}
    if m.graphs["target"].flavour == "standard":   # gqa writes the new rows into the cache in place
        bufs["target_new_rows"] = cache_bytes(md.num_layers, md.num_kv_heads, q_max, md.head_dim, item)
    if dd is None:
        return bufs
    bufs["draft_cache"] = cache_bytes(1, dd.num_kv_heads, S, dd.head_dim, item)
    if m.graphs["draft"].flavour == "standard":
        bufs["draft_new_rows"] = cache_bytes(1, dd.num_kv_heads, q_max, dd.head_dim, item)
    return bufs


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(nbytes: int, what: str) -> None:
    """EngineError when `nbytes` of KV cache exceed this machine's RAM (named by `what`)."""
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        raise EngineError(f"{what} needs {nbytes / 2**30:.1f} GiB of KV cache, more than this machine's "
                          f"{ram / 2**30:.1f} GiB of memory")


# ---------------------------------------------------------------------------------------------------
# graph I/O


@dataclass(frozen=True)
class TensorSpec:
    """Expected tensor: dtype name and shape; an int is a fixed dim, a str a free one."""
    dtype: str
    shape: tuple[int | str, ...]


def expected_io(m: Manifest, role: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """(inputs, outputs) of a graph as docs/engine-format.md fixes them for this manifest."""
    md, dd, S = m.model, m.draft, m.limits.max_seq_len
    f, i64 = m.model.dtype, "int64"
    in_place = role in m.graphs and m.graphs[role].flavour == "gqa"
    new_rows = S if in_place else "q"   # gqa: present_* is the whole cache, written in place
    if role == "target":
        ins = {"input_ids": TensorSpec(i64, (1, "q")), "position_ids": TensorSpec(i64, (1, "q")),
               "tree_mask": TensorSpec("bool", (1, "q", "q")), "past_len": TensorSpec(i64, (1,))}
        outs = {"logits": TensorSpec("float32", (1, "q", md.vocab_size)),
                "argmax": TensorSpec(i64, (1, "q")),
                "features": TensorSpec(f, (1, "q", m.feature_size))}
        for i in range(md.num_layers):
            for kind in ("key", "value"):
                ins[f"past_{kind}_{i}"] = TensorSpec(f, (1, md.num_kv_heads, S, md.head_dim))
                outs[f"present_{kind}_{i}"] = TensorSpec(f, (1, md.num_kv_heads, new_rows, md.head_dim))
        return ins, outs
    if role == "draft_fc":
        return ({"features": TensorSpec(f, (1, "q", m.feature_size))},
                {"hidden": TensorSpec(f, (1, "q", dd.hidden_size))})
    if role == "draft":
        ins = {"input_ids": TensorSpec(i64, (1, "q")), "hidden": TensorSpec(f, (1, "q", dd.hidden_size)),
               "position_ids": TensorSpec(i64, (1, "q")), "tree_mask": TensorSpec("bool", (1, "q", "T")),
               "past_len": TensorSpec(i64, (1,)),
               "past_key": TensorSpec(f, (1, dd.num_kv_heads, S, dd.head_dim)),
               "past_value": TensorSpec(f, (1, dd.num_kv_heads, S, dd.head_dim))}
        outs = {"topk_ids": TensorSpec(i64, (1, "q", dd.k_max)),
                "topk_logp": TensorSpec("float32", (1, "q", dd.k_max)),
                "hidden_out": TensorSpec(f, (1, "q", dd.hidden_size)),
                "present_key": TensorSpec(f, (1, dd.num_kv_heads, new_rows, dd.head_dim)),
                "present_value": TensorSpec(f, (1, dd.num_kv_heads, new_rows, dd.head_dim))}
        return ins, outs
    raise ValueError(f"unknown graph role {role!r}")


# ORT NodeArg.type strings -> dtype names
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def check_graph_io(m: Manifest, role: str, inputs: Sequence[tuple[str, str, Sequence[Any]]],
                   outputs: Sequence[tuple[str, str, Sequence[Any]]]) -> None:
    """Compare declared graph I/O [(name, dtype name, shape)] with `expected_io`; raise EngineError."""
    file = m.graphs[role].file
    for kind, declared, expected in (("input", inputs, expected_io(m, role)[0]),
                                     ("output", outputs, expected_io(m, role)[1])):
        have = {name: (dtype, list(shape)) for name, dtype, shape in declared}
        for name, spec in expected.items():
            if name not in have:
                raise EngineError(f"{file}: {kind} {name!r} missing (graph has {sorted(have)})")
            dtype, shape = have[name]
            if dtype != spec.dtype:
                raise EngineError(f"{file}: {kind} {name!r} has dtype {dtype}, expected {spec.dtype}")
            if len(shape) != len(spec.shape):
                raise EngineError(f"{file}: {kind} {name!r} has rank {len(shape)} {shape}, "
                                  f"expected rank {len(spec.shape)} {list(spec.shape)}")
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                if kind == "input" and isinstance(want, int) and not isinstance(got, int):
                    # buffers are allocated from the manifest: a free dim would accept any size
                    raise EngineError(f"{file}: input {name!r} dim {axis} is symbolic ({got!r}), the manifest "
                                      f"fixes it at {want} (shape {list(spec.shape)}); check "
                                      f"{_dim_field(role, name, axis)}")
                if isinstance(want, int) and isinstance(got, int) and got != want:
                    raise EngineError(f"{file}: {kind} {name!r} dim {axis} is {got}, manifest implies "
                                      f"{want} (shape {list(spec.shape)}); check {_dim_field(role, name, axis)}")
                if name.startswith("present_") and isinstance(want, int) != isinstance(got, int):
                    # the q new rows (standard) vs the whole cache written in place (gqa)
                    raise EngineError(f"{file}: output {name!r} dim {axis} is {got!r}, the manifest's "
                                      f"graphs.{role}.flavour {m.graphs[role].flavour!r} implies {want!r}")
        if kind == "input":
            extra = sorted(set(have) - set(expected))
            if extra:
                raise EngineError(f"{file}: unexpected input(s) {extra} not in the format_version "
                                  f"{FORMAT_VERSION} contract")


def _dim_field(role: str, name: str, axis: int) -> str:
    """The manifest field a graph dim comes from (for error messages)."""
    prefix = "model" if role == "target" else "draft"
    if "key" in name or "value" in name:
        return {1: f"{prefix}.num_kv_heads", 2: "limits.max_seq_len", 3: f"{prefix}.head_dim"}.get(axis, "?")
    return {"logits": "model.vocab_size", "features": "model.hidden_size / model.feature_layers",
            "hidden": "draft.hidden_size", "hidden_out": "draft.hidden_size", "topk_ids": "draft.k_max",
            "topk_logp": "draft.k_max"}.get(name, "?")


def ort_io(session: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """Declared (inputs, outputs) of an onnxruntime InferenceSession as check_graph_io wants them."""
    def conv(args: Any) -> list[tuple[str, str, list[Any]]]:
        return [(a.name, ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]
    return conv(session.get_inputs()), conv(session.get_outputs())
