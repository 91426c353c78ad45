"""The Triton model's tensors (names as TensorRT-LLM's ensemble uses them). Optional inputs left out take
the engine's defaults; every response carries one streamed piece: its text and its token ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODEL_NAME = "talon"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type                  # numpy dtype; np.bytes_ for Triton's TYPE_STRING
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def triton_type(self) -> str:
        return TRITON_TYPES[self.dtype]


TRITON_TYPES = {np.bytes_: "TYPE_STRING", np.int32: "TYPE_INT32", np.int64: "TYPE_INT64", np.float32: "TYPE_FP32"}

INPUTS = (
    TensorSpec("text_input", np.bytes_, (1,)),                    # the prompt, UTF-8
    TensorSpec("max_tokens", np.int32, (1,), optional=True),
    TensorSpec("temperature", np.float32, (1,), optional=True),
    TensorSpec("top_p", np.float32, (1,), optional=True),
    TensorSpec("seed", np.int64, (1,), optional=True),
)
OUTPUTS = (
    TensorSpec("text_output", np.bytes_, (1,)),                   # this piece's text
    TensorSpec("token_ids", np.int64, (-1,)),                     # this piece's token ids
)

