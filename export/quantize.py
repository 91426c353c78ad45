"""Weight-only quantisation of the draft graph (`--draft-weights int8|int4`; draft_fc stays float).

The draft only proposes tokens; the target verifies every one of them, so a quantised draft changes
which tokens are proposed, never what is emitted (decoding stays lossless against the target's own
weights). On the 2-core CPU the demo head's calls get cheaper and evict less of the target's
weights from the caches between calls; its greedy agreement with the target did not drop
(docs/performance.md).

Every MatMul with a constant weight becomes com.microsoft.MatMulNBits (ONNX Runtime's blockwise
weight-only format: symmetric blocks of 32, int8 activations at compute time). ORT only: TensorRT
plans need float draft weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from export.errors import ExportError

DRAFT_WEIGHTS = {"float": None, "int8": 8, "int4": 4}
BLOCK = 32


def quantize_graph(path: Path, weights: str) -> int:
    """Rewrite the graph at `path` in place with `weights`-bit MatMul weights; returns how many
    MatMuls were quantised."""
    bits = DRAFT_WEIGHTS[weights]
    if bits is None:
        return 0
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(path))
    config = mnq.DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4,
                                              bits=bits)
    quantizer = mnq.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    count = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    if count == 0:
        raise ExportError(f"{path.name}: no MatMul with a constant weight to quantise to {weights}")
    onnx.save(out, str(path))
    return count
