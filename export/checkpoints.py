"""Load local checkpoints into the reference modules: HF Llama-family targets and EAGLE-3 heads.

Weights are read from `model.safetensors`, sharded `*.safetensors` with `model.safetensors.index.json`,
or `pytorch_model.bin` (sharded or not, read with `torch.load(weights_only=True)`, never a full
unpickle). Every expected tensor is checked by name and shape before use; a problem is a
`CheckpointError` naming the key and the file.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from export.config import HeadConfig, TargetConfig
from export.errors import CheckpointError
from export.reference import Eagle3Head, Target

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


def load_target(folder: str | Path, feature_layers=None, dtype: torch.dtype = torch.float32) -> Target:
    """HF folder -> `Target` with weights in `dtype` (float32 by default), eval mode.

    `feature_layers` overrides the default taps. Rotary tables stay float32 whatever `dtype` is.
    """
    folder = Path(folder)
    cfg = TargetConfig.from_hf(read_config(folder), str(folder / "config.json"))
    if feature_layers is not None:
        cfg = cfg.with_feature_layers(feature_layers)
    with _default_dtype(dtype):
        model = Target(cfg).eval()
    tensors, origin = read_weights(folder)
    if cfg.tie_word_embeddings:  # lm_head is the embedding; a stored copy is redundant
        tensors.pop("lm_head.weight", None)
    _fill(model, tensors, origin, folder, optional=("lm_head.weight",) if cfg.tie_word_embeddings else ())
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
