"""The MatMulNBits block layout every quantised weight is stored in (`BlockWeight`), whether quantised
here (export/quantize.py) or kept from a llama.cpp file's own blocks (export/gguf_blocks.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32  # values per block along K: llama.cpp's Q4_0/Q4_1/Q8_0 block, ORT's default


@dataclass(frozen=True)
class BlockWeight:
    """A weight [N, K] in MatMulNBits layout, plus an optional per-block offset.

    data [N, K/BLOCK, BLOCK*bits/8] uint8: values low nibble first (4-bit); scales [N, K/BLOCK]
    float32; zero_points [N, ceil(K/BLOCK*bits/8)] uint8 packed the same way, or None for
    2^(bits-1) everywhere (symmetric); mins [N, K/BLOCK] float32 or None: w = (q - z) * scale + min
    (llama.cpp's Q4_1 `d*q + m`). A graph adds the mins as (block sums of x) @ mins^T, a product
    1/BLOCK the size of the weight's."""
    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    mins: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1] * BLOCK

    def full_zero_points(self) -> np.ndarray:
        """zero_points with the symmetric default written out."""
        if self.zero_points is not None:
            return self.zero_points
        n, blocks = self.scales.shape
        z = 1 << (self.bits - 1)
        return pack(np.full((n, blocks), z, np.uint8), self.bits)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """[..., n] integers in [0, 2^bits) -> [..., ceil(n*bits/8)] uint8, first value in the low bits."""
    values = values.astype(np.uint8)
    if bits == 8:
        return values
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], -1)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack`: [..., bytes] uint8 -> [..., n] uint8."""
    if bits == 8:
        return packed[..., :n]
    return np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[:-1] + (-1,))[..., :n]


def dequantize(w: BlockWeight) -> np.ndarray:
    """[N, K] float32: (q - zero_point) * scale."""
    n, k = w.shape
    blocks = k // BLOCK
    q = unpack(w.data, w.bits, BLOCK).astype(np.float32)                             # [N, blocks, BLOCK]
    z = unpack(w.full_zero_points(), w.bits, blocks).astype(np.float32)              # [N, blocks]
    out = (q - z[..., None]) * w.scales[..., None]
    if w.mins is not None:
        out = out + w.mins[..., None]
    return out.reshape(n, k)


def concat(parts: list[BlockWeight]) -> BlockWeight:
    """BlockWeights of one K and one bit width stacked along N (one fused q|k|v projection)."""
    if len(parts) == 1:
        return parts[0]
    if len({p.bits for p in parts}) > 1:
        raise ValueError(f"cannot stack blocks of {sorted({p.bits for p in parts})} bits into one weight")
    zp = mins = None
    if any(p.zero_points is not None for p in parts):
        zp = np.concatenate([p.full_zero_points() for p in parts])
    if any(p.mins is not None for p in parts):
        mins = np.concatenate([p.mins if p.mins is not None else np.zeros_like(p.scales) for p in parts])
    return BlockWeight(np.concatenate([p.data for p in parts]), np.concatenate([p.scales for p in parts]),
                       zp, parts[0].bits, mins)
