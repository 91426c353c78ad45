"""llama.cpp weight blocks -> MatMulNBits blocks, exactly.

Each supported ggml type stores blocks of 32 values along K, a row of a weight [N, K] being
K/32 blocks in a row:
  Q4_0 (18 bytes): d fp16, qs[16]; x[j] = qs[j] & 15, x[j+16] = qs[j] >> 4; w = d * (x - 8)
  Q4_1 (20 bytes): d fp16, m fp16, qs[16] as Q4_0;                          w = d * x + m
  Q8_0 (34 bytes): d fp16, x[32] int8;                                       w = d * x
MatMulNBits computes (q - zero_point) * scale with integer q and zero points in [0, 2^bits). Q4_0
and Q8_0 are that with one integer shift per block, Q8_0 at 8 bits whatever width was asked for (it
does not fit 4). Q4_1's -m/d is almost never an integer, so it is stored as q = x, zero point 0,
scale d, plus its block minimum m (BlockWeight.mins: the graph adds the activation's block sums
times m). Every value equals the file's d*x + m (or d*(x - 8), d*x) as llama.cpp dequantizes it.
"""
from __future__ import annotations

import numpy as np

from export.errors import ExportError
from export.quantize import BLOCK, BlockWeight, pack

BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def from_ggml(ggml_type: str, rows: np.ndarray, shape: tuple[int, int], bits: int) -> BlockWeight | None:
    """rows [N, K/32 * block bytes] uint8 of a `ggml_type` weight of `shape` (N, K) -> the same values
    as a `bits`-bit BlockWeight, or None when MatMulNBits cannot hold them exactly."""
    if ggml_type not in BLOCK_BYTES:
        return None
    n, k = shape
    size = BLOCK_BYTES[ggml_type]
    if k % BLOCK or rows.dtype != np.uint8 or rows.shape != (n, k // BLOCK * size):
        raise ExportError(f"{ggml_type} blocks: expected uint8 rows [{n}, {k // BLOCK * size}] for a "
                          f"[{n}, {k}] weight, got {rows.dtype} {list(rows.shape)}")
    b = rows.reshape(n, k // BLOCK, size)
    if ggml_type == "Q4_1":
        return _with_mins(b, bits)
    x, z, d = _decode(ggml_type, b)
    return _fit(x, z, d, 8 if ggml_type == "Q8_0" else bits)


def _with_mins(b: np.ndarray, bits: int) -> BlockWeight:
    """Q4_1 blocks b [N, blocks, 20] -> q = x, zero point 0, scale d, mins m."""
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    x = np.concatenate([qs & 15, qs >> 4], -1)
    n, blocks = d.shape
    return BlockWeight(pack(x, bits), d, pack(np.zeros((n, blocks), np.uint8), bits), bits, m)


def _decode(ggml_type: str, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 / Q8_0 blocks b [N, blocks, bytes] -> x [N, blocks, 32] int32, z [N, blocks], d [N, blocks] float32."""
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
    if ggml_type == "Q8_0":
        x = np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.int32)
        return x, np.zeros(d.shape), d
    qs = b[..., 2:]
    return np.concatenate([qs & 15, qs >> 4], -1).astype(np.int32), np.full(d.shape, 8.0), d


def _fit(x: np.ndarray, z: np.ndarray, d: np.ndarray, bits: int) -> BlockWeight | None:
    """w = d * (x - z), z an integer -> q = x + c, zero_point = z + c with one integer shift c per block."""
    z = z.astype(np.int64)
    top, half = (1 << bits) - 1, 1 << (bits - 1)
    lo, hi = x.min(-1), x.max(-1)
    c = half - z                                   # symmetric: every zero point at 2^(bits-1)
    symmetric = bool(np.all((lo + c >= 0) & (hi + c <= top)))
    if not symmetric:
        c = -np.minimum(lo, z)                     # lowest of values and zero point at 0
        if not np.all(np.maximum(hi, z) + c <= top):
            return None
    q = (x + c[..., None]).astype(np.uint8)
    n, blocks = d.shape
    return BlockWeight(pack(q, bits), d, None if symmetric else pack((z + c).astype(np.uint8), bits), bits)
