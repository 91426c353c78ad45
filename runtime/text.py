"""Decoded text of a growing token list, handed out piece by piece as it grows (streaming)."""

from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT = "\ufffd"   # what a tokenizer decodes an incomplete UTF-8 sequence to


class IncrementalText:
    """`push(tokens)` returns the text the new tokens add; a trailing partial character (or a piece
    that changes text already handed out) is held back until a later token completes it."""

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode = decode
        self.tokens: list[int] = []
        self.shown = ""

    def push(self, new: Sequence[int]) -> str:
        self.tokens.extend(new)
        text = self.decode(self.tokens)
        if text.endswith(REPLACEMENT) or not text.startswith(self.shown):
            return ""
        piece, self.shown = text[len(self.shown):], text
        return piece

    def rest(self) -> str:
        """The text still held back once the tokens are final."""
        text = self.decode(self.tokens)
        piece = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return piece
