"""One generation as an iterator of streamed pieces, for servers whose API pulls (Triton's decoupled
responses, PyTriton's generator functions): the engine runs on a helper thread and its on_tokens
callback hands each round's tokens over. Closing the iterator, or `cancelled()` turning True,
stops the generation at the next round (on_tokens returns False)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from runtime.api import Generator
from runtime.text import IncrementalText

SAMPLING = ("temperature", "top_p", "seed")


@dataclass(frozen=True)
class StreamRequest:
    prompt: str
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)   # SAMPLING overrides; absent = the engine's


@dataclass(frozen=True)
class Piece:
    text: str
    tokens: list[int]


_END = object()


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
