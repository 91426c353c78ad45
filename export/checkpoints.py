"""Load local checkpoints into the reference modules: HF Llama-family targets (a folder or a GGUF
file, export/gguf.py) and EAGLE-3 heads.

Weights are read from `model.safetensors`, sharded `*.safetensors` with `model.safetensors.index.json`,
or `pytorch_model.bin` (sharded or not, read with `torch.load(weights_only=True)`, never a full
unpickle). Every expected tensor is checked by name and shape before use; a problem is a
`CheckpointError` naming the key and the file.
"""
from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from talon_rt.export.config import HeadConfig, TargetConfig
from talon_rt.export.errors import CheckpointError
from talon_rt.export.reference import Eagle3Head, Target

# checkpoint keys that carry no weights of ours (older HF checkpoints store rotary tables)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a checkpoint folder needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None


def read_weights(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a checkpoint folder -> (name -> tensor, name -> file name it came from)."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
                raise CheckpointError(f"{index}: not a valid index (needs 'weight_map': {e!r})") from None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: weight_map is not an object")
            tensors, origin = {}, {}
            for shard in sorted(set(weight_map.values()), key=str):
                _check_shard(folder, index_name, shard)
                part = _read_file(folder / shard)
                tensors.update(part)
                origin.update({k: shard for k in part})
            for key, shard in weight_map.items():
                if key not in tensors:
                    raise CheckpointError(f"{folder / shard}: tensor {key!r} listed in {index_name} is missing")
            return tensors, origin
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            part = _read_file(folder / name)
            return part, {k: name for k in part}
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, a sharded *.safetensors index, or pytorch_model.bin)")


def _check_shard(folder: Path, index_name: str, shard: object) -> None:
    """A weight_map shard must name a file inside the checkpoint folder (as the runtime confines the
    files of a manifest): a relative path, no `..` out of it, no symlink leading out of it."""
    if not isinstance(shard, str) or not shard or "\x00" in shard or Path(shard).is_absolute():
        raise CheckpointError(f"{folder / index_name}: weight_map shard {shard!r} is not a relative file path "
                              f"inside {folder}")
    if not (folder / shard).resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{folder / index_name}: weight_map shard {shard!r} resolves outside {folder}")


def _read_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors / torch raise many types for a damaged file
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a flat name -> tensor state dict")
    return obj


def _fill(module: torch.nn.Module, tensors: dict[str, Tensor], origin: dict[str, str], folder: Path,
          optional: tuple[str, ...] = ()) -> None:
    """Copy checkpoint tensors into `module` (converted to its dtypes), checking every name and shape."""
    expected = module.state_dict()
    for key, param in expected.items():
        if key not in tensors:
            if key in optional:
                continue
            raise CheckpointError(f"{folder}: tensor {key!r} is missing from the checkpoint")
        t = tensors[key]
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f"{folder / origin[key]}: tensor {key!r} has shape {list(t.shape)}, "
                                  f"expected {list(param.shape)}")
    extra = [k for k in tensors if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise CheckpointError(f"{folder / origin[extra[0]]}: unexpected tensor {extra[0]!r} "
                              f"({len(extra)} unexpected in all); the config does not describe it")
    with torch.no_grad():
        for key, param in expected.items():
            if key in tensors:
                param.copy_(tensors[key].to(param.dtype))


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Allocate a module's floating-point weights in `dtype` directly (no fp32 copy of a large model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class HFFolder:
    """A Hugging Face model folder: config.json, weights, tokenizer.json, tokenizer_config.json."""

    def __init__(self, path: Path):
        self.path = path
        self.config_source = str(path / "config.json")

    @property
    def config(self) -> dict:
        return read_config(self.path)

    def tensors(self, log=None) -> tuple[dict[str, Tensor], dict[str, str]]:
        return read_weights(self.path)

    def write_tokenizer(self, dest: Path) -> None:
        src = self.path / "tokenizer.json"
        if not src.is_file():
            raise CheckpointError(f"{src}: not found (the engine needs a tokenizers-format tokenizer.json)")
        shutil.copyfile(src, dest)

    def _json(self, name: str) -> dict:
        p = self.path / name
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: not valid JSON ({e})") from None

    @property
    def chat_template(self) -> str | None:
        """tokenizer_config.json's `chat_template` (a string, or a list of named templates: the
        "default" one), else chat_template.jinja, else None."""
        template = self._json("tokenizer_config.json").get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and (self.path / "chat_template.jinja").is_file():
            template = (self.path / "chat_template.jinja").read_text()
        if template is not None and not isinstance(template, str):
            raise CheckpointError(f"{self.path / 'tokenizer_config.json'}: chat_template is not a string")
        return template

    def special_tokens(self, vocab_size: int) -> dict:
        """bos/eos/pad ids from generation_config.json > config.json > tokenizer_config.json (token strings)."""
        gen, cfg, tok_cfg = (self._json(n) for n in ("generation_config.json", "config.json", "tokenizer_config.json"))
        vocab = None

        def from_token(key: str):
            nonlocal vocab
            tok = tok_cfg.get(key)
            if isinstance(tok, dict):
                tok = tok.get("content")
            if not isinstance(tok, str):
                return None
            if vocab is None:
                from tokenizers import Tokenizer
                vocab = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            return vocab.token_to_id(tok)

        def pick(key: str):
            for src in (gen, cfg):
                if src.get(key + "_id") is not None:
                    return src[key + "_id"]
            return from_token(key)

        bos, eos, pad = pick("bos_token"), pick("eos_token"), pick("pad_token")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        for name, ids in (("bos_id", [bos]), ("eos_ids", eos_ids), ("pad_id", [pad])):
            for i in ids:
                if i is not None and not (isinstance(i, int) and 0 <= i < vocab_size):
                    raise CheckpointError(f"{self.path}: special token {name} = {i!r} is outside [0, {vocab_size})")
        return {"bos_id": bos, "eos_ids": eos_ids, "pad_id": pad}

    def description(self) -> dict:
        """The manifest's `source` record."""
        return {"format": "hf", "name": self.path.name, "quantization": None}

    def sampling_defaults(self) -> dict:
        """generation_config.json's sampling settings as manifest defaults ({temperature, top_p, top_k},
        those present), when it samples (`do_sample: true`); {} when it decodes greedily, as
        transformers does (do_sample false or absent: the other fields are unused)."""
        name = "generation_config.json"
        gen = self._json(name)
        if gen.get("do_sample") is not True:
            return {}
        out = {}
        checks = {"temperature": (float, lambda v: v >= 0, ">= 0"), "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
                  "top_k": (int, lambda v: v >= 0, ">= 0")}
        for key, (kind, ok, rule) in checks.items():
            if gen.get(key) is None:
                continue
            value = gen[key]
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                    or not math.isfinite(value) or not ok(value):
                raise CheckpointError(f"{self.path / name}: {key} {value!r} is not a number {rule}")
            out[key] = kind(value)
        return out


def open_source(path: str | Path, label: str = "--model"):
    """A target source: an HF folder (`HFFolder`) or a GGUF file (`talon_rt.export.gguf.GGUFModel`)."""
    path = Path(path)
    if path.is_dir():
        return HFFolder(path)
    if path.is_file():
        from talon_rt.export.gguf import GGUFModel
        return GGUFModel.open(path)
    raise CheckpointError(f"{label} {path}: not found (not a directory or a GGUF file)")


def load_target(source, feature_layers=None, dtype: torch.dtype = torch.float32) -> Target:
    """HF folder or GGUF file (a path or an `open_source` result) -> `Target` with weights in `dtype`
    (float32 by default), eval mode.

    `feature_layers` overrides the default taps. Rotary tables stay float32 whatever `dtype` is.
    """
    if isinstance(source, (str, Path)):
        source = open_source(source)
    cfg = TargetConfig.from_hf(source.config, source.config_source)
    if feature_layers is not None:
        cfg = cfg.with_feature_layers(feature_layers)
    with _default_dtype(dtype):
        model = Target(cfg).eval()
    tensors, origin = source.tensors()
    if cfg.tie_word_embeddings:  # lm_head is the embedding; a stored copy is redundant
        tensors.pop("lm_head.weight", None)
    _fill(model, tensors, origin, source.path if source.path.is_dir() else source.path.parent,
          optional=("lm_head.weight",) if cfg.tie_word_embeddings else ())
    return model


def load_head(folder: str | Path, target: Target) -> Eagle3Head:
    """EAGLE-3 folder -> `Eagle3Head` in the target's weight dtype, eval mode; embedding from the
    target when absent."""
    folder = Path(folder)
    source = str(folder / "config.json")
    cfg = HeadConfig.from_hf(read_config(folder), source)
    tc = target.config
    if cfg.hidden_size != tc.hidden_size:
        raise CheckpointError(f"{source}: hidden_size {cfg.hidden_size} != target hidden_size {tc.hidden_size}")
    if cfg.vocab_size != tc.vocab_size:
        raise CheckpointError(f"{source}: vocab_size {cfg.vocab_size} != target vocab_size {tc.vocab_size}")
    if cfg.draft_vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{source}: draft_vocab_size {cfg.draft_vocab_size} > vocab_size {cfg.vocab_size}")
    tensors, origin = read_weights(folder)
    with _default_dtype(target.lm_head.weight.dtype):
        head = Eagle3Head(cfg, with_embedding="embed_tokens.weight" in tensors).eval()
    # d2t/t2d may be absent only when the draft vocabulary is the target's
    optional = ("d2t", "t2d") if cfg.draft_vocab_size == cfg.vocab_size else ()
    _fill(head, tensors, origin, folder, optional=optional)
    if "t2d" not in tensors:
        head.t2d.fill_(True)
    target_ids = torch.arange(cfg.draft_vocab_size) + head.d2t
    if target_ids.min() < 0 or target_ids.max() >= cfg.vocab_size:
        raise CheckpointError(f"{folder / origin.get('d2t', '')}: tensor 'd2t' maps draft ids outside "
                              f"the target vocabulary [0, {cfg.vocab_size})")
    if head.embed_tokens is None:
        head.set_embedding(target.model.embed_tokens.weight.detach())
    return head
