"""OpenAI `stop` strings: the output ends just before the first stop string to appear in it.

Matching is incremental (Knuth-Morris-Pratt): each stop string keeps the length of its longest prefix
that ends the text so far, so each new character costs O(1) per stop string (amortized), whatever the
stop strings' lengths and however long the output grows.
"""

from __future__ import annotations

from typing import Sequence


class _Matcher:
    """The longest prefix of `s` that is a suffix of the text fed so far."""

    def __init__(self, s: str):
        self.s = s
        self.fail = [0] * len(s)          # fail[i]: longest proper border of s[:i + 1]
        k = 0
        for i in range(1, len(s)):
            while k and s[i] != s[k]:
                k = self.fail[k - 1]
            if s[i] == s[k]:
                k += 1
            self.fail[i] = k
        self.state = 0

    def step(self, c: str) -> bool:
        """Feed one character; True when the whole stop string has just been seen."""
        s, k = self.s, self.state
        while k and c != s[k]:
            k = self.fail[k - 1]
        if c == s[k]:
            k += 1
        self.state = k
        return k == len(s)


class StopText:
    """Filters streamed text: `feed(piece)` returns what may be sent now. Text that could be the start
    of a stop string is held back until the next piece settles it; `matched` turns True at a stop."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._matchers = [_Matcher(s) for s in self.stops]
        self.held = ""
        self.matched = False

    def feed(self, piece: str) -> str:
        if self.matched:
            return ""
        text = self.held + piece
        base = len(self.held)
        for j, c in enumerate(piece):
            done = [m for m in self._matchers if m.step(c)]
            if done:                       # the earliest-starting of the stop strings ending here
                self.matched, self.held = True, ""
                return text[:base + j + 1 - max(len(m.s) for m in done)]
        keep = max((m.state for m in self._matchers), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back text once no more text will come."""
        held, self.held = self.held, ""
        return held
