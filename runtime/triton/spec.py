"""The Triton model's tensors (names as TensorRT-LLM's ensemble uses them). Optional inputs left out take
the engine's defaults; every response carries one streamed piece: its text and its token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from runtime.errors import InputError
from runtime.triton.stream import Piece, StreamRequest

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


def read_request(tensor: Callable[[str], "np.ndarray | None"]) -> StreamRequest:
    """A StreamRequest from a request's tensors (`tensor(name)`: the array, None when not sent)."""
    prompt = tensor("text_input")
    if prompt is None or prompt.size != 1:
        raise InputError("text_input: expected one UTF-8 string")
    raw = prompt.reshape(-1)[0]
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise InputError("text_input: not UTF-8") from None
    scalars = {spec.name: tensor(spec.name) for spec in INPUTS if spec.optional}
    for name, value in scalars.items():
        if value is not None and value.size != 1:
            raise InputError(f"{name}: expected one value, got shape {list(value.shape)}")
    given = {k: v.reshape(-1)[0].item() for k, v in scalars.items() if v is not None}
    return StreamRequest(text, given.pop("max_tokens", None), given)


def piece_arrays(piece: Piece) -> dict[str, np.ndarray]:
    """One response's outputs."""
    return {"text_output": np.array([piece.text.encode("utf-8")], dtype=np.object_),
            "token_ids": np.array(piece.tokens, dtype=np.int64)}
