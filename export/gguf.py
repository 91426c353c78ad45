"""GGUF files (llama.cpp's format) as an export input, read with the `gguf` package.

A GGUF carries everything an HF folder does, in other spellings: architecture metadata (-> the
config.json dict `TargetConfig.from_hf` reads), tensors named `blk.N.attn_q.weight` and stored in
ggml types (-> dequantized float32 under HF names), and the tokenizer with its chat template
(-> tokenizer.json through transformers' GGUF tokenizer converter).

llama.cpp's converter permutes the rows of Llama's q/k projections (rotary halves interleaved per
head); `tensors()` and `raw_blocks()` undo it, so both speak HF's layout.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from talon_rt.export.errors import CheckpointError

# general.architecture -> HF model_type; the keys of a GGUF's metadata are prefixed with the former
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# archs whose q/k rows llama.cpp's converter permutes (LlamaModel.permute): un-permuted on reading
_PERMUTED_QK = ("llama",)

# blk.N.<gguf suffix> -> model.layers.N.<HF suffix>
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def is_gguf(path: str | Path) -> bool:
    """A regular file that starts with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


@dataclass
class GGUFModel:
    """One GGUF file, opened (memory-mapped) once; tensors are dequantized on request."""

    path: Path
    _reader: object = field(repr=False)

    @classmethod
    def open(cls, path: str | Path) -> GGUFModel:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: not found")
        if not is_gguf(path):
            raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic at the start)")
        import gguf
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:  # the reader raises ValueError, KeyError, struct errors on a damaged file
            raise CheckpointError(f"{path}: cannot read the GGUF ({type(e).__name__}: {e})") from None
        return cls(path, reader)

    # ---- metadata ------------------------------------------------------------------------------

    def meta(self, key: str, default=None):
        fld = self._reader.fields.get(key)
        if fld is None:
            return default
        return fld.contents()

    def _req(self, key: str):
        value = self.meta(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata {key!r} is missing")
        return value

    @property
    def config_source(self) -> str:
        return f"{self.path} (metadata)"

    @cached_property
    def arch(self) -> str:
        arch = self._req("general.architecture")
        if arch not in ARCHITECTURES:
            raise CheckpointError(f"{self.path}: general.architecture {arch!r} is not supported "
                                  f"(supported: {', '.join(ARCHITECTURES)})")
        return arch

    @cached_property
    def quantization(self) -> str:
        """The file type llama.cpp names it by (Q4_1, Q8_0, F16, ...), or the commonest tensor type."""
        import gguf
        ftype = self.meta("general.file_type")
        if ftype is not None:
            try:
                return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_")
            except ValueError:
                pass
        types = [t.tensor_type.name for t in self._reader.tensors if len(t.shape) == 2]
        return max(set(types), key=types.count) if types else "unknown"

    def _int(self, key: str, default: int | None = None, low: int = 1) -> int:
        """An integer metadata value >= `low` (`default` when absent; required when no default)."""
        value = self._req(key) if default is None else self.meta(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CheckpointError(f"{self.path}: metadata {key!r} = {value!r:.40} is not an integer")
        if value < low:
            raise CheckpointError(f"{self.path}: metadata {key!r} = {value} must be >= {low}")
        return int(value)

    def _positive(self, key: str, default: float | None = None) -> float:
        """A finite metadata number > 0 (`default` when absent; required when no default)."""
        value = self._req(key) if default is None else self.meta(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CheckpointError(f"{self.path}: metadata {key!r} = {value!r:.40} is not a number")
        if not (math.isfinite(value) and value > 0):
            raise CheckpointError(f"{self.path}: metadata {key!r} = {value} must be a finite number > 0")
        return float(value)

    @cached_property
    def config(self) -> dict:
        """The metadata as the config.json dict an HF folder of the same model would carry, checked
        against the tensors' shapes (and the float32 weights against the machine's memory) before
        anything is built from it."""
        a = self.arch
        heads = self._int(f"{a}.attention.head_count")
        hidden = self._int(f"{a}.embedding_length")
        vocab = self.meta(f"{a}.vocab_size")
        vocab = self._int(f"{a}.vocab_size") if vocab is not None else len(self._req("tokenizer.ggml.tokens"))
        cfg = {
            "model_type": ARCHITECTURES[a],
            "hidden_size": hidden,
            "intermediate_size": self._int(f"{a}.feed_forward_length"),
            "num_hidden_layers": self._int(f"{a}.block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": self._int(f"{a}.attention.head_count_kv", heads),
            "head_dim": self._int(f"{a}.attention.key_length", max(1, hidden // heads)),
            "vocab_size": vocab,
            "rms_norm_eps": self._positive(f"{a}.attention.layer_norm_rms_epsilon"),
            "max_position_embeddings": self._int(f"{a}.context_length", 2048),
            "hidden_act": "silu",
            "tie_word_embeddings": self._tensor("output.weight") is None,
            "rope_parameters": self._rope(),
        }
        if self._tensor("blk.0.attn_output.bias") is not None:
            cfg["attention_bias"] = True
        for key in ("bos", "eos", "padding"):
            value = self.meta(f"tokenizer.ggml.{key}_token_id")
            if value is not None:
                cfg[f"{'pad' if key == 'padding' else key}_token_id"] = self._int(f"tokenizer.ggml.{key}_token_id", 0, 0)
        self._check_tensors(cfg)
        return cfg

    def _check_tensors(self, cfg: dict) -> None:
        """Every tensor's shape is the one the metadata implies, every block has its tensors, and the
        float32 weights fit in memory."""
        from talon_rt.runtime.manifest import physical_memory
        V, H, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
        q, kv, hd = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"], cfg["head_dim"]
        shapes = {"token_embd.weight": (V, H), "output_norm.weight": (H,), "output.weight": (V, H),
                  "attn_norm.weight": (H,), "ffn_norm.weight": (H,), "attn_q.weight": (q, H), "attn_k.weight": (kv, H),
                  "attn_v.weight": (kv, H), "attn_output.weight": (H, q), "attn_q.bias": (q,), "attn_k.bias": (kv,),
                  "attn_v.bias": (kv,), "attn_output.bias": (H,), "attn_q_norm.weight": (hd,),
                  "attn_k_norm.weight": (hd,), "ffn_gate.weight": (I, H), "ffn_up.weight": (I, H),
                  "ffn_down.weight": (H, I)}
        blocks = cfg["num_hidden_layers"]
        found, elements = set(), 0
        for t in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))   # ggml lists the fastest dim first
            parts = t.name.split(".", 2)
            if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
                if int(parts[1]) >= blocks:
                    raise CheckpointError(f"{self.path}: tensor {t.name!r} is beyond metadata "
                                          f"{self.arch}.block_count = {blocks}")
                found.add(int(parts[1]))
                want = shapes.get(parts[2])
            else:
                want = shapes.get(t.name)
            if want is not None and shape != want:
                raise CheckpointError(f"{self.path}: tensor {t.name!r} has shape {list(shape)}, the metadata "
                                      f"implies {list(want)}")
            if 0 in shape:
                raise CheckpointError(f"{self.path}: tensor {t.name!r} has shape {list(shape)} (a dimension of 0)")
            elements += math.prod(shape)
        if len(found) != blocks:
            missing = min(set(range(blocks)) - found)
            raise CheckpointError(f"{self.path}: metadata {self.arch}.block_count = {blocks}, but block {missing} "
                                  f"has no tensors ({len(found)} blocks in the file)")
        memory = physical_memory()
        if memory is not None and 4 * elements > memory:
            raise CheckpointError(f"{self.path}: the weights need {4 * elements / 2**30:.1f} GiB as float32, more "
                                  f"than this machine's {memory / 2**30:.1f} GiB of memory")

    def _rope(self) -> dict:
        a = self.arch
        theta = self._positive(f"{a}.rope.freq_base", 10000.0)
        if self._tensor("rope_freqs.weight") is not None:
            raise CheckpointError(f"{self.path}: tensor 'rope_freqs.weight' (llama3-style rope scaling stored "
                                  f"as per-frequency factors) is not supported")
        kind = self.meta(f"{a}.rope.scaling.type", "none")
        if kind in ("none", None):
            return {"rope_type": "default", "rope_theta": theta}
        if kind == "linear":
            return {"rope_type": "linear", "rope_theta": theta,
                    "factor": self._positive(f"{a}.rope.scaling.factor")}
        raise CheckpointError(f"{self.path}: {a}.rope.scaling.type {kind!r} is not supported (none, linear)")

    @cached_property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    def description(self) -> dict:
        """The manifest's `source` record."""
        return {"format": "gguf", "name": self.path.name, "quantization": self.quantization}

    def sampling_defaults(self) -> dict:
        """A GGUF carries no generation_config.json: no sampling defaults of its own."""
        return {}

    # ---- tensors -------------------------------------------------------------------------------

    @cached_property
    def _by_name(self) -> dict:
        return {t.name: t for t in self._reader.tensors}

    def _tensor(self, name: str):
        return self._by_name.get(name)

    def hf_name(self, gguf_name: str) -> str | None:
        if gguf_name in _GLOBAL_TENSORS:
            return _GLOBAL_TENSORS[gguf_name]
        parts = gguf_name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
            return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}"
        return None

    @cached_property
    def _hf_tensors(self) -> dict[str, object]:
        """HF name -> the file's tensor record, every tensor checked once."""
        out = {}
        for name, t in self._by_name.items():
            hf = self.hf_name(name)
            if hf is None:
                raise CheckpointError(f"{self.path}: tensor {name!r} has no counterpart in a "
                                      f"{self.arch} model (unexpected tensor)")
            out[hf] = t
        return out

    def _qk_heads(self, hf_name: str) -> int | None:
        """Heads whose rows llama.cpp permuted in this tensor, or None."""
        if self.arch not in _PERMUTED_QK:
            return None
        if hf_name.endswith("self_attn.q_proj.weight"):
            return self.config["num_attention_heads"]
        if hf_name.endswith("self_attn.k_proj.weight"):
            return self.config["num_key_value_heads"]
        return None

    def _unpermute(self, rows: np.ndarray, hf_name: str) -> np.ndarray:
        heads = self._qk_heads(hf_name)
        if heads is None:
            return rows
        n = rows.shape[0]
        # the converter's permute: row j of the file is row order[j] of HF's [heads, 2, n/heads/2] layout
        order = np.arange(n).reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(-1)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def tensors(self, log=None) -> tuple[dict, dict[str, str]]:
        """HF name -> float32 torch tensor, and HF name -> where it came from (for error messages)."""
        import torch
        from gguf.quants import dequantize
        out, origin = {}, {}
        items = self._hf_tensors
        for i, (hf, t) in enumerate(items.items()):
            try:
                data = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise CheckpointError(f"{self.path}: tensor {t.name!r} has ggml type {t.tensor_type.name}, "
                                      f"which the gguf package cannot dequantize") from None
            shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists the fastest dim first
            data = np.asarray(data, dtype=np.float32).reshape(shape)
            out[hf] = torch.from_numpy(self._unpermute(data, hf).copy())
            origin[hf] = f"{self.path.name}:{t.name}"
            if log is not None:
                log(i + 1, len(items))
        return out, origin

    def raw_blocks(self, hf_name: str) -> tuple[str, np.ndarray] | None:
        """(ggml type name, uint8 [out_features, bytes per row]) of a block-quantized matrix, rows in
        HF order; None for a float tensor or one this file lacks."""
        import gguf
        t = self._hf_tensors.get(hf_name)
        if t is None or t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                          gguf.GGMLQuantizationType.BF16):
            return None
        rows = np.asarray(t.data, dtype=np.uint8)
        return t.tensor_type.name, self._unpermute(rows.reshape(rows.shape[0], -1), hf_name)

    # ---- tokenizer -----------------------------------------------------------------------------

    def write_tokenizer(self, dest: Path) -> None:
        """tokenizer.json (HF `tokenizers` format) built from the GGUF's vocabulary and merges."""
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        except Exception as e:  # transformers raises many types for a tokenizer it cannot convert
            raise CheckpointError(f"{self.path}: cannot convert the GGUF tokenizer "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        # transformers' converter may append a special token (gpt2's <|endoftext|>) past the GGUF's
        # vocabulary: no embedding row exists for it, so it is dropped
        data = json.loads(tok.backend_tokenizer.to_str())
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < self.config["vocab_size"]]
        dest.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    def special_tokens(self, vocab_size: int) -> dict:
        cfg = self.config
        ids = {"bos_id": cfg.get("bos_token_id"), "eos_ids": [cfg["eos_token_id"]] if "eos_token_id" in cfg else [],
               "pad_id": cfg.get("pad_token_id")}
        for key, value in (("bos_id", ids["bos_id"]), ("pad_id", ids["pad_id"]), *(("eos_ids", e) for e in ids["eos_ids"])):
            if value is not None and not 0 <= value < vocab_size:
                raise CheckpointError(f"{self.path}: special token {key} = {value} is outside [0, {vocab_size})")
        return ids
