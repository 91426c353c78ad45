"""The manifest's schema (docs/engine-format.md, format_version 1): typed sections and their parsing.

`parse_manifest(root, raw)` turns manifest.json's object into a `Manifest`; every failure is an
EngineError naming the field ("manifest.json: model.vocab_size: missing").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from talon_rt.runtime.errors import EngineError

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
    raw: Mapping[str, Any]          # manifest.json as read (talon_rt.export.trt rewrites it)
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



def field_error(field: str, msg: str) -> EngineError:
    return EngineError(f"{MANIFEST}: {field}: {msg}")


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         optional: bool = False) -> Any:
    field = f"{where}.{key}" if where else key
    if key not in obj:
        if optional:
            return None
        raise field_error(field, "missing")
    value = obj[key]
    if optional and value is None:
        return None
    # bool is an int subclass; a flag is never a valid dim
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise field_error(field, f"expected {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise field_error(field, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object",
             list: "a list", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(obj, key, int, where)
    if value <= 0:
        raise field_error(f"{where}.{key}", f"must be a positive integer, got {value}")
    return value


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _get(raw, key, dict, "")


def _parse_model(raw: Mapping[str, Any]) -> ModelDims:
    m = _section(raw, "model")
    layers = _get(m, "feature_layers", list, "model")
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise field_error("model.feature_layers", f"expected a non-empty list of integers, got {layers!r}")
    num_layers = _positive(m, "num_layers", "model")
    bad = [i for i in layers if not 0 <= i <= num_layers]
    if bad:
        raise field_error("model.feature_layers", f"{bad} outside [0, num_layers={num_layers}]")
    dtype = _get(m, "dtype", str, "model")
    if dtype not in KV_DTYPES:
        raise field_error("model.dtype", f"unsupported {dtype!r} (expected one of {sorted(KV_DTYPES)})")
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
        raise field_error("model.weights", f"{dims.weights!r} is not one of {', '.join(DRAFT_WEIGHTS)}")
    compute = _get(m, "compute", str, "model", optional=True) or ("float" if dims.weights == "float" else "int8")
    if compute not in TARGET_COMPUTE or (dims.weights == "float" and compute != "float"):
        allowed = TARGET_COMPUTE if dims.weights != "float" else ("float",)
        raise field_error("model.compute", f"{compute!r} is not one of {', '.join(allowed)} "
                                    f"(model.weights {dims.weights})")
    dims = replace(dims, compute=compute)
    if dims.num_heads % dims.num_kv_heads:
        raise field_error("model.num_kv_heads", f"{dims.num_kv_heads} does not divide num_heads={dims.num_heads}")
    return dims


def _parse_draft(raw: Mapping[str, Any], model: ModelDims) -> DraftDims | None:
    if "draft" not in raw:
        raise field_error("draft", "missing (null for a target-only engine)")
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
        raise field_error("draft.weights", f"{dims.weights!r} is not one of {', '.join(DRAFT_WEIGHTS)}")
    if dims.hidden_size != model.hidden_size:
        raise field_error("draft.hidden_size", f"{dims.hidden_size} != model.hidden_size={model.hidden_size}")
    if dims.draft_vocab_size > model.vocab_size:
        raise field_error("draft.draft_vocab_size", f"{dims.draft_vocab_size} > model.vocab_size={model.vocab_size}")
    if dims.k_max > dims.draft_vocab_size:
        raise field_error("draft.k_max", f"{dims.k_max} > draft_vocab_size={dims.draft_vocab_size}")
    return dims


def _token_id(obj: Mapping[str, Any], key: str, vocab: int, optional: bool) -> int | None:
    value = _get(obj, key, int, "tokenizer", optional=optional)
    if value is not None and not 0 <= value < vocab:
        raise field_error(f"tokenizer.{key}", f"{value} outside the vocabulary [0, {vocab})")
    return value


def _parse_tokenizer(raw: Mapping[str, Any], vocab: int) -> TokenizerInfo:
    t = _section(raw, "tokenizer")
    eos = _get(t, "eos_ids", list, "tokenizer")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in eos):
        raise field_error("tokenizer.eos_ids", f"expected token ids in [0, {vocab}), got {eos!r}")
    stop = _get(t, "stop_ids", list, "tokenizer", optional=True) or []
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in stop):
        raise field_error("tokenizer.stop_ids", f"expected token ids in [0, {vocab}), got {stop!r}")
    template = t.get("chat_template")
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise field_error("tokenizer.chat_template", f"expected a Jinja2 template string or null, got {template!r:.80}")
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
        raise field_error("source.quantization", f"expected a string or null, got {src['quantization']!r}")
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
            raise field_error(f"limits.{key}", f"{getattr(limits, key)} > max_seq_len={limits.max_seq_len}")
    return limits


def _parse_graphs(raw: Mapping[str, Any], has_draft: bool) -> dict[str, GraphEntry]:
    """Every role's graph; only the target's when the manifest's `draft` is null."""
    g = _section(raw, "graphs")
    graphs = {}
    if not has_draft:
        extra = [r for r in DRAFT_ROLES if r in g]
        if extra:
            raise field_error(f"graphs.{extra[0]}", "present, but draft is null (a target-only engine has no draft graphs)")
    for role in ROLES if has_draft else ("target",):
        entry = _get(g, role, dict, "graphs")
        flavour = _get(entry, "flavour", str, f"graphs.{role}")
        known = FLAVOURS[role]
        if flavour not in known:
            raise field_error(f"graphs.{role}.flavour", f"unsupported {flavour!r} (this runtime reads "
                                                 f"{' or '.join(repr(f) for f in known)})")
        graphs[role] = GraphEntry(file=_get(entry, "file", str, f"graphs.{role}"), flavour=flavour)
    return graphs


def _parse_files(raw: Mapping[str, Any]) -> dict[str, FileEntry]:
    f = _section(raw, "files")
    files = {}
    for name, entry in f.items():
        if not isinstance(entry, dict):
            raise field_error(f"files.{name}", f"expected an object, got {entry!r}")
        digest = _get(entry, "sha256", str, f"files.{name}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise field_error(f"files.{name}.sha256", f"not a sha256 hex digest: {digest!r}")
        size = _get(entry, "bytes", int, f"files.{name}")
        if size < 0:
            raise field_error(f"files.{name}.bytes", f"negative size {size}")
        files[name] = FileEntry(sha256=digest.lower(), bytes=size)
    return files


def parse_manifest(root: Path, raw: Any) -> Manifest:
    """The `Manifest` of manifest.json's contents `raw` (read from the directory `root`)."""
    path = root / MANIFEST
    if not isinstance(raw, dict):
        raise EngineError(f"{path}: expected a JSON object at the top level")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise field_error("format_version", f"unsupported value {version!r} (this runtime reads {FORMAT_VERSION})")

    model = _parse_model(raw)
    tokenizer = _parse_tokenizer(raw, model.vocab_size)
    draft = _parse_draft(raw, model)
    graphs = _parse_graphs(raw, draft is not None)
    files = _parse_files(raw)
    defaults = _get(raw, "defaults", dict, "")
    return Manifest(
        dir=root, name=_get(raw, "name", str, ""), created_by=str(raw.get("created_by", "")),
        model=model, draft=draft, tokenizer=tokenizer, limits=_parse_limits(raw),
        defaults=dict(defaults), graphs=graphs, files=files, raw=raw, source=_parse_source(raw),
    )
