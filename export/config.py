"""Typed model configs for the target (HF Llama family) and the EAGLE-3 head, parsed from config.json.

Both transformers v4 (`rope_theta` + `rope_scaling`) and v5 (`rope_parameters`) spellings are read.
Anything this package cannot reproduce exactly is a `CheckpointError` naming the field, never a
silent approximation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from talon_rt.export.errors import CheckpointError

# model_type -> (qkv bias by default, q/k norm). Llama covers Llama 2/3/3.1 and Vicuna.
ARCHITECTURES = {
    "llama": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Rope:
    """Rotary embedding parameters (HF semantics; inv_freq is built by `reference.rope_inv_freq`)."""

    theta: float = 10000.0  # 10000: the base when a config names none (the official EAGLE-3 config)
    type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True)
class TargetConfig:
    architecture: str  # llama | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: Rope = field(default_factory=Rope)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rotary
    tie_word_embeddings: bool = False
    context_length: int | None = None  # max_position_embeddings (a GGUF's context_length): the trained context
    # EAGLE-3 taps: hidden_states[i] (transformers' convention: input of layer i), low -> mid -> high
    feature_layers: tuple[int, int, int] = (2, 1, 1)

    @staticmethod
    def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
        return (2, num_layers // 2, num_layers - 3)

    def with_feature_layers(self, layers) -> "TargetConfig":
        layers = tuple(int(i) for i in layers)
        if len(layers) != 3 or not all(0 <= i <= self.num_layers for i in layers):
            raise CheckpointError(f"feature_layers {list(layers)}: need 3 indices in [0, {self.num_layers}]")
        return replace(self, feature_layers=layers)

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> "TargetConfig":
        arch = cfg.get("model_type")
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"{source}: model_type {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
        qkv_bias_default, qk_norm = ARCHITECTURES[arch]
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (only 'silu')")
        if cfg.get("use_sliding_window"):
            raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
        other = sorted({t for t in cfg.get("layer_types") or [] if t != "full_attention"})
        if other:
            raise CheckpointError(f"{source}: layer_types {other} are not supported (only 'full_attention')")
        H, nh = _req(cfg, "hidden_size", source), _req(cfg, "num_attention_heads", source)
        L = _req(cfg, "num_hidden_layers", source)
        attention_bias = bool(cfg.get("attention_bias", False))
        c = cls(
            architecture=arch,
            vocab_size=_req(cfg, "vocab_size", source),
            hidden_size=H,
            intermediate_size=_req(cfg, "intermediate_size", source),
            num_layers=L,
            num_heads=nh,
            num_kv_heads=int(cfg.get("num_key_value_heads") or nh),
            head_dim=int(cfg.get("head_dim") or H // nh),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=parse_rope(cfg, source),
            qkv_bias=qkv_bias_default or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=qk_norm,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            context_length=int(cfg["max_position_embeddings"]) if cfg.get("max_position_embeddings") else None,
            feature_layers=cls.default_feature_layers(L),
        )
        for name, value in (("rms_norm_eps", c.rms_norm_eps), ("rope_theta", c.rope.theta),
                            ("rope factor", c.rope.factor)):
            if not (math.isfinite(value) and value > 0):
                raise CheckpointError(f"{source}: {name} = {value} must be a finite number > 0")
        if c.num_heads % c.num_kv_heads:
            raise CheckpointError(f"{source}: num_attention_heads {nh} is not a multiple of num_key_value_heads")
        return c


@dataclass(frozen=True)
class HeadConfig:
    """EAGLE-3 head: one Llama decoder layer whose attention takes 2H inputs."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # target vocab (embedding rows, t2d length)
    draft_vocab_size: int
    rms_norm_eps: float = 1e-6
    rope: Rope = field(default_factory=Rope)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # False: the published EAGLE-3 layer (residual = the raw hidden); True: residual = hidden_norm(h)
    norm_before_residual: bool = False
    # layers tapped for the features, in transformers' hidden_states convention; None: the default
    feature_layers: tuple[int, int, int] | None = None

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> "HeadConfig":
        H, nh = _req(cfg, "hidden_size", source), _req(cfg, "num_attention_heads", source)
        V = _req(cfg, "vocab_size", source)
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (only 'silu')")
        attention_bias = bool(cfg.get("attention_bias", False))
        taps = None
        # SpecForge / speculators name layer *outputs*: output of layer j = hidden_states[j + 1]
        for key in ("eagle_aux_hidden_state_layer_ids", "aux_hidden_state_layer_ids"):
            ids = cfg.get(key) or (cfg.get("eagle_config") or {}).get(key)
            if ids:
                if len(ids) != 3:
                    raise CheckpointError(f"{source}: {key} must list 3 layers, got {ids}")
                taps = tuple(int(i) + 1 for i in ids)
        head = cls(
            hidden_size=H,
            intermediate_size=_req(cfg, "intermediate_size", source),
            num_heads=nh,
            num_kv_heads=int(cfg.get("num_key_value_heads") or nh),
            head_dim=int(cfg.get("head_dim") or H // nh),
            vocab_size=V,
            draft_vocab_size=int(cfg.get("draft_vocab_size") or V),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=parse_rope(cfg, source),
            qkv_bias=attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            norm_before_residual=bool(cfg.get("norm_before_residual", False)),
            feature_layers=taps,
        )
        for name, value in (("rms_norm_eps", head.rms_norm_eps), ("rope_theta", head.rope.theta)):
            if not (math.isfinite(value) and value > 0):
                raise CheckpointError(f"{source}: {name} = {value} must be a finite number > 0")
        return head


def parse_rope(cfg: dict, source: str = "config.json") -> Rope:
    """Rope from `rope_parameters` (transformers v5) or `rope_theta` + `rope_scaling` (v4)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if not params.get("rope_type") and not params.get("type"):
        params.update(scaling)
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rtype = params.get("rope_type") or params.get("type") or "default"
    if rtype not in ROPE_TYPES:
        raise CheckpointError(f"{source}: rope type {rtype!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if rtype == "default":
        return Rope(theta=float(theta))
    if "factor" not in params:
        raise CheckpointError(f"{source}: rope type {rtype!r} needs 'factor'")
    if rtype == "linear":
        return Rope(theta=float(theta), type="linear", factor=float(params["factor"]))
    for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if k not in params:
            raise CheckpointError(f"{source}: rope type 'llama3' needs {k!r}")
    return Rope(theta=float(theta), type="llama3", factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]))


def _req(cfg: dict, key: str, source: str) -> int:
    """A required integer field >= 1."""
    if key not in cfg or cfg[key] is None:
        raise CheckpointError(f"{source}: missing field {key!r}")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: field {key!r} = {value!r:.40} must be an integer >= 1")
    return value
