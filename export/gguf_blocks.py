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

from talon_rt.export.errors import ExportError
from talon_rt.export.blocks import BLOCK, BlockWeight, pack

BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def from_ggml(ggml_type: str, rows: np.ndarray, shape: tuple[int, int], bits: int) -> BlockWeight | None:
    """rows [N, K/32 * block bytes] uint8 of a `ggml_type` weight of `shape` (N, K) -> the same values
    as a BlockWeight (`bits` wide, 8 for Q8_0), or None for a type this module does not know."""
    if ggml_type not in BLOCK_BYTES:
        return None
    n, k = shape
    size = BLOCK_BYTES[ggml_type]
    if k % BLOCK or rows.dtype != np.uint8 or rows.shape != (n, k // BLOCK * size):
        raise ExportError(f"{ggml_type} blocks: expected uint8 rows [{n}, {k // BLOCK * size}] for a "
                          f"[{n}, {k}] weight, got {rows.dtype} {list(rows.shape)}")
    b = rows.reshape(n, k // BLOCK, size)
    d = _half(b, 0)                                                     # [N, blocks] scales
    if ggml_type == "Q8_0":
        return _symmetric(np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.int32), 0, d, 8)
    if ggml_type == "Q4_0":
        return _symmetric(_nibbles(b[..., 2:]).astype(np.int32), 8, d, bits)
    zero = pack(np.zeros(d.shape, np.uint8), bits)                      # Q4_1: q = x, zero point 0, + m
    return BlockWeight(pack(_nibbles(b[..., 4:]), bits), d, zero, bits, _half(b, 2))


def _half(b: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of every block b [N, blocks, bytes], as float32 [N, blocks]."""
    return np.ascontiguousarray(b[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes a block -> its 32 4-bit values: x[j] = qs[j] & 15, x[j+16] = qs[j] >> 4."""
    return np.concatenate([qs & 15, qs >> 4], -1)


def _symmetric(x: np.ndarray, z: int, d: np.ndarray, bits: int) -> BlockWeight:
    """w = d * (x - z) -> q = x - z + 2^(bits-1) at the kernels' default zero point 2^(bits-1): Q4_0's
    x - 8 lies in [-8, 7] and Q8_0's x in [-128, 127], so q fits `bits` bits (4 or 8 for Q4_0, 8 for Q8_0)."""
    return BlockWeight(pack((x - z + (1 << (bits - 1))).astype(np.uint8), bits), d, None, bits)
