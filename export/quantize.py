"""Weight-only blockwise quantisation for ONNX Runtime: `--target-weights` and `--draft-weights`
float | int8 | int4.

A quantised linear layer is one com.microsoft.MatMulNBits: the weight [N, K] is stored in blocks of
BLOCK along K, `bits` per value, one scale per block, and y = x @ ((q - zero_point) * scale)^T. A
quantised embedding is one com.microsoft.GatherBlockQuantized over the same layout, so a tied
embedding and LM head share one BlockWeight. ORT only: TensorRT plans need float weights.

Float weights are quantised round-to-nearest, symmetric (zero point 2^(bits-1), scale = the block's
signed extreme / -2^(bits-1)), by ONNX Runtime's own C++ quantiser (`quantize_matmul_{4,8}bits`, as
its MatMulNBitsQuantizer). Weights that arrive as llama.cpp blocks keep the file's own blocks exactly
(export/gguf_blocks.py: Q4_0, Q8_0, and Q4_1 with its block minimums); other ggml types are quantised
from their dequantised values, and `WeightQuantizer.storage_lines` names each with its error.

The draft only proposes tokens; the target verifies every one of them, so quantised draft weights
(draft.onnx's and draft_fc.onnx's) change which tokens are proposed, never what is emitted. Quantised target weights make a different
model from a float engine (unless they are the GGUF's own), which speculative decoding follows token
for token. `--target-compute` picks the activations MatMulNBits computes with:
- int8 (default, accuracy_level 4): the fast kernels; each row's activations are rounded to int8 per
  block, so an ulp of difference upstream can become whole logits. Flavour ort computes every row
  exactly as `ar` does (onnx_graphs.invariant_attention), so speculative output still equals `ar`'s.
- float (accuracy_level 1): float32 activations; ~1.4x the call cost at q=1, ~1.7x at q=8 on the
  2-core CPU.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from talon_rt.export.blocks import BLOCK, BlockWeight, dequantize
from talon_rt.export.errors import ExportError
from talon_rt.export.gguf_blocks import from_ggml

if TYPE_CHECKING:
    import torch

WEIGHTS = {"float": None, "int8": 8, "int4": 4}
# --target-compute -> MatMulNBits accuracy_level: int8 activations with int32 accumulation (MLAS's
# fast CompInt8 kernels), or float32 activations (CompFp32: one kernel's rounding, no int8 steps)
COMPUTE = {"int8": 4, "float": 1}

# (ggml type name, uint8 rows [N, bytes per row]) of a weight stored in llama.cpp blocks, or None
RawBlocks = Callable[[str], "tuple[str, np.ndarray] | None"]


def quantize_rtn(weight: np.ndarray, bits: int) -> BlockWeight:
    """Float [N, K] (K a multiple of BLOCK) -> symmetric round-to-nearest BlockWeight."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits
    n, k = weight.shape
    blocks = k // BLOCK
    data = np.zeros((n, blocks, BLOCK * bits // 8), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zero_points = np.zeros((n, (blocks * bits + 7) // 8), np.uint8)  # written, unused: symmetric
    fn = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    fn(data, np.ascontiguousarray(weight.T, dtype=np.float32), scales, zero_points, BLOCK, n, k, True)
    return BlockWeight(data, scales, None, bits)


@dataclass(frozen=True)
class Stored:
    """How one weight went into the graph: its source (a ggml type or "float"), its storage, and the
    largest |stored - source| relative to the tensor's largest |value| (0 when exact)."""
    name: str
    source: str
    storage: str
    rel_error: float

    @property
    def exact(self) -> bool:
        return self.rel_error == 0.0


def storage_name(w: BlockWeight) -> str:
    kind = f"{w.bits}-bit, " + ("symmetric" if w.zero_points is None else "zero points")
    return kind + (" + block minimums" if w.mins is not None else "")


def rel_error(w: BlockWeight, source: np.ndarray) -> float:
    top = float(np.abs(source).max())
    return float(np.abs(dequantize(w) - source).max()) / top if top else 0.0


class WeightQuantizer:
    """Makes the BlockWeight of each weight a graph quantises, from the file's own blocks where
    `raw_blocks` has them and MatMulNBits can hold them exactly (llama.cpp's Q4_0, Q4_1 and Q8_0, each
    at its own bit width), else by `quantize_rtn`; records how each was stored (`stored`, `summary`)."""

    def __init__(self, weights: str, raw_blocks: RawBlocks | None = None, compute: str = "int8"):
        if WEIGHTS.get(weights) is None:
            raise ValueError(f"weights {weights!r}: expected one of int8, int4")
        if compute not in COMPUTE:
            raise ValueError(f"compute {compute!r}: expected one of {', '.join(COMPUTE)}")
        self.weights, self.bits, self.raw_blocks = weights, WEIGHTS[weights], raw_blocks
        self.compute, self.accuracy_level = compute, COMPUTE[compute]
        self.kept: Counter[str] = Counter()         # ggml type -> matrices stored from the file's blocks
        self.requantised: Counter[str] = Counter()  # source ("float" or a ggml type) -> matrices re-quantised
        self.made: dict[str, BlockWeight] = {}      # checkpoint tensor name -> its blocks
        self.stored: dict[str, Stored] = {}         # checkpoint tensor name -> how it was stored

    def block_weight(self, name: str | None, weight: np.ndarray) -> BlockWeight:
        """`weight` [N, K] float (the dequantised values); `name` its checkpoint tensor name."""
        n, k = weight.shape
        if k % BLOCK:
            raise ExportError(f"{name or 'weight'}: {k} input features is not a multiple of the "
                              f"{self.weights} block size {BLOCK}")
        raw = self.raw_blocks(name) if self.raw_blocks is not None and name is not None else None
        if raw is not None:
            ggml_type, rows = raw
            exact = from_ggml(ggml_type, rows, (n, k), self.bits)
            if exact is not None:
                self.kept[ggml_type] += 1
                return self._made(name, exact, ggml_type, 0.0)
        source = "float" if raw is None else raw[0]
        self.requantised[source] += 1
        w = quantize_rtn(weight, self.bits)
        return self._made(name, w, source, rel_error(w, weight))

    def _made(self, name: str | None, w: BlockWeight, source: str, error: float) -> BlockWeight:
        if name is not None:
            self.made[name] = w
            self.stored[name] = Stored(name, source, storage_name(w), error)
        return w

    def storage_lines(self) -> list[str]:
        """The export log's account of every weight: one line per (source, storage) group, then one per
        weight stored with an error (re-quantised), naming it and its largest relative error."""
        groups: dict[tuple[str, str, bool], list[str]] = {}
        for st in self.stored.values():
            groups.setdefault((st.source, st.storage, st.exact), []).append(st.name)
        lines = []
        for (source, storage, exact), names in sorted(groups.items()):
            how = "exact" if exact else "re-quantised round-to-nearest"
            lines.append(f"{len(names)} {'weight' if len(names) == 1 else 'weights'} {source} -> {storage} "
                         f"({how}): {_names(names)}")
        lines += [f"  {st.name}: {st.source} -> {st.storage}, max |error| {st.rel_error:.2%} of its largest |weight|"
                  for st in self.stored.values() if not st.exact]
        return lines

    def dequantized(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` whose quantised weights hold their dequantised blocks: the model the
        quantised graph computes, up to its int8 activations (the reference talon_rt.export.check uses)."""
        import copy

        import torch
        out = copy.deepcopy(model)
        with torch.no_grad():
            for name, w in self.made.items():
                p = out.get_parameter(name)
                p.copy_(torch.from_numpy(dequantize(w)).to(p.dtype))
        return out

    def summary(self) -> str:
        parts = [f"{n} from the file's {t} blocks" for t, n in sorted(self.kept.items())]
        parts += [f"{n} {'quantised' if t == 'float' else f're-quantised from {t}'}"
                  for t, n in sorted(self.requantised.items())]
        return f"{self.weights} block {BLOCK}, {self.compute} compute: " + ", ".join(parts)

    def record(self) -> dict:
        """The manifest's account of it: {"block_size", "compute", "kept": {type: n}, "requantised": {type: n},
        "tensors": {name: "source -> storage"}}."""
        return {"block_size": BLOCK, "compute": self.compute, "kept": dict(sorted(self.kept.items())),
                "requantised": dict(sorted(self.requantised.items())),
                "tensors": {st.name: f"{st.source} -> {st.storage}" + ("" if st.exact else f" (max rel. error "
                                                                         f"{st.rel_error:.2e})")
                            for st in self.stored.values()}}


def _names(names: list[str]) -> str:
    """A short list of weight names: the first few, then how many more."""
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
