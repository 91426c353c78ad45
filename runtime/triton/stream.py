"""One generation as an iterator of streamed pieces, for servers whose API pulls (Triton's decoupled
responses, PyTriton's generator functions): the engine runs on a helper thread and its on_tokens
callback hands each round's tokens over. Closing the iterator, or `cancelled()` turning True,
stops the generation at the next round (on_tokens returns False). `read_request` and `piece_arrays`
turn spec.py's tensors into a request and a piece into a response's tensors."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import InputError
from talon_rt.runtime.text import IncrementalText
from talon_rt.runtime.triton.spec import INPUTS

@dataclass(frozen=True)
class StreamRequest:
    prompt: str
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)   # temperature, top_p, seed; absent = the engine's


@dataclass(frozen=True)
class Piece:
    text: str
    tokens: list[int]


_END = object()


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


def generate_stream(gen: Generator, req: StreamRequest,
                    cancelled: Callable[[], bool] = lambda: False) -> Iterator[Piece]:
    """Pieces of the generation as they are accepted; the last one holds any text held back."""
    target = gen.with_options(**req.options) if req.options else gen
    pieces: queue.Queue = queue.Queue()
    text = IncrementalText(target.decode)
    stop = threading.Event()

    def on_tokens(new: list[int]) -> bool:
        pieces.put(Piece(text.push(new), list(new)))
        return not (stop.is_set() or cancelled())

    def work() -> None:
        try:
            target.generate(target.encode(req.prompt), req.max_tokens, on_tokens)
            tail = text.rest()
            if tail:
                pieces.put(Piece(tail, []))
            pieces.put(_END)
        except BaseException as e:   # handed to the consumer, raised there
            pieces.put(e)

    worker = threading.Thread(target=work, name="talon-stream", daemon=True)
    worker.start()
    try:
        while (item := pieces.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
