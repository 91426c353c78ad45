"""The graph I/O contract: each role's input and output names, dtypes and shapes as the manifest's
dims fix them (docs/engine-format.md), and the check of a graph's declared I/O against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest.schema import FORMAT_VERSION, Manifest


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
