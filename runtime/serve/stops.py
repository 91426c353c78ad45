"""OpenAI `stop` strings: the output ends just before the first occurrence of any of them."""

from __future__ import annotations

from typing import Sequence


class StopText:
    """Filters streamed text: `feed(piece)` returns what may be sent now. Text that could be the start
    of a stop string is held back until the next piece settles it; `matched` turns True at a stop."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.matched = False

    def feed(self, piece: str) -> str:
        if self.matched:
            return ""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.matched, self.held = True, ""
            return text[:min(hits)]
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back text once no more text will come."""
        held, self.held = self.held, ""
        return held
