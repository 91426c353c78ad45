"""Context lookup: draft tokens copied from the text seen so far (docs/design.md §4.6).

The history is the prompt and every token generated since. `Lookup` finds the longest n-gram
(min_n <= n <= max_n) that ends the history and occurred earlier, and proposes what followed its
most recent occurrences, as a trie of continuations rooted at the history's last token.

Index: every n-gram (n <= max_n) that occurred gets an id, keyed by (the id of its last n-1 tokens,
its first token), so the n-grams ending at one position are found by growing one token to the left,
one small dict lookup each; per id, how often it occurred and the end positions of its `recent` newest
occurrences. An n-gram ending at e is registered once token e exists (its continuation then has a
token), so `extend` with m tokens makes at most m * max_n lookups: O(new tokens) per round, whatever
the history's length.

Scores, comparable to a head's cumulative log-probs: the match is read as n agreements in a row, and
by Laplace's rule of succession the continuation's next token agrees with probability
(n + 1) / (n + 2), the one after with (n + 2) / (n + 3), ...; a path of depth d then has probability
(n + 1) / (n + d + 1). Where the r recent occurrences disagree, the path's share k / r of them (k:
the occurrences whose continuation starts with the path) multiplies in:

    logp(node) = log(k / r) + log((n + 1) / (n + d + 1))

It decreases strictly from a parent to its child, so the best m nodes of a trie form a tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from talon_rt.talon.nodes import check_int


@dataclass(frozen=True)
class LookupConfig:
    min_n: int = 1    # one-token matches still find copies; transformers' prompt lookup also goes down to 1
    max_n: int = 8    # longer matches rarely change the continuation; bounds the update to 8 keys a token
    recent: int = 4   # occurrences a match proposes continuations from (and the k / r counts)

    def __post_init__(self) -> None:
        check_int("min_n", self.min_n, 1)
        check_int("max_n", self.max_n, self.min_n)
        check_int("recent", self.recent, 1)


@dataclass(frozen=True)
class Match:
    n: int                    # matched suffix length (0: no match)
    count: int                # earlier occurrences of the suffix
    ends: tuple[int, ...]     # end positions (exclusive) of its `recent` newest occurrences, newest first


NO_MATCH = Match(0, 0, ())


@dataclass(frozen=True)
class Proposal:
    """The continuation trie: m nodes, parents before children; parent -1 is the history's last token."""

    tokens: np.ndarray    # int64 [m]
    parents: np.ndarray   # int64 [m]
    depth: np.ndarray     # int64 [m], 1 under the last token
    logp: np.ndarray      # float64 [m], the module docstring's score
    match: Match

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def best(self, m: int) -> np.ndarray:
        """The indices of the best m nodes by score (ties: trie order), ascending: a closed subtrie."""
        if self.size <= m:
            return np.arange(self.size)
        return np.sort(np.argsort(-self.logp, kind="stable")[:m])


class Lookup:
    """The n-gram index of one history; mutable (one per generation session)."""

    def __init__(self, config: LookupConfig = LookupConfig()):
        self.config = config
        self.reset(())

    def __repr__(self) -> str:
        return f"Lookup({self.config!r}, {len(self.history)} tokens)"

    def reset(self, tokens: Iterable[int]) -> None:
        """Start a new history (the prompt, and the first generated token)."""
        self.history: list[int] = []
        self.ids: dict[tuple[int, int], int] = {}   # (id of g[1:], g[0]) -> id of the n-gram g; -1: empty
        self.count: list[int] = []                  # occurrences of each n-gram id
        self.ends: list[list[int]] = []             # their end positions, oldest first (newest `recent` kept)
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens and register the n-grams that now have a continuation."""
        h, ids, count, ends = self.history, self.ids, self.count, self.ends
        old = len(h)
        h.extend(int(t) for t in tokens)
        hi, keep = self.config.max_n, self.config.recent
        for e in range(max(old, 1), len(h)):   # the n-grams ending at e (h[e] now follows them)
            node = -1
            for n in range(1, min(hi, e) + 1):   # grown one token to the left at a time
                key = (node, h[e - n])
                node = ids.get(key, -1)
                if node < 0:
                    node = ids[key] = len(count)
                    count.append(1)
                    ends.append([e])
                else:
                    count[node] += 1
                    at = ends[node]
                    at.append(e)
                    if len(at) > 2 * keep:   # trimmed now and then: amortised O(1)
                        del at[:-keep]

    def match(self) -> Match:
        """The longest suffix of the history (min_n..max_n tokens) that occurred before."""
        h, L = self.history, len(self.history)
        node, found, n_found = -1, -1, 0
        for n in range(1, min(self.config.max_n, L - 1) + 1):   # a longer match needs the shorter ones
            node = self.ids.get((node, h[L - n]), -1)
            if node < 0:
                break
            if n >= self.config.min_n:
                found, n_found = node, n
        if found < 0:
            return NO_MATCH
        return Match(n_found, self.count[found], tuple(reversed(self.ends[found][-self.config.recent:])))

    def propose(self, depth: int) -> Proposal:
        """The continuations (up to `depth` tokens each) of the match's recent occurrences as a trie."""
        match = self.match()
        h, L = self.history, len(self.history)
        index: dict[tuple[int, int], int] = {}      # (trie parent, token) -> node
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        counts: list[int] = []
        for e in match.ends:
            parent = -1
            for d, token in enumerate(h[e:min(e + depth, L)], start=1):
                node = index.get((parent, token))
                if node is None:
                    node = index[(parent, token)] = len(tokens)
                    tokens.append(token)
                    parents.append(parent)
                    depths.append(d)
                    counts.append(0)
                counts[node] += 1
                parent = node
        n, r = match.n, max(len(match.ends), 1)
        d = np.array(depths, dtype=np.int64)
        logp = np.log(np.array(counts, dtype=np.float64) / r) + np.log((n + 1) / (n + d + 1.0))
        return Proposal(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64), d, logp, match)

