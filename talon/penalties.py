"""Repetition, frequency and presence penalties on the target's logits, node by node of a draft tree.

Each node's logits are penalised by the tokens of its own context: the committed context plus the
tokens on the node's path below the root (its ancestors and itself). A speculative round thus
penalises every node exactly as `ar` does once that path is committed, and verification stays
lossless (greedy output equals `ar`'s with the same penalties; sampled output follows its distribution).

    repetition r (CTRL, Hugging Face): the logit x of a token seen in the context, prompt included,
                 becomes x / r if x > 0, else x * r
    frequency f, presence p (OpenAI): x -= f * c + p * (c > 0), c = how often the token was generated
Applied in that order (as vLLM does), before temperature and the top-k / top-p / min-p filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from talon_rt.talon.tree import DraftTree


@dataclass(frozen=True)
class Penalties:
    repetition: float = 1.0   # 1 = off
    frequency: float = 0.0    # 0 = off
    presence: float = 0.0     # 0 = off

    @property
    def active(self) -> bool:
        return self.repetition != 1.0 or self.frequency != 0.0 or self.presence != 0.0


class PenaltyContext:
    """The committed context's token statistics: which tokens occur in it (prompt and generated) and
    how often each was generated. `start(prompt)`, then `add(tokens)` as tokens are committed."""

    def __init__(self, penalties: Penalties, vocab: int):
        self.penalties = penalties
        self.seen = np.zeros(vocab, np.bool_)        # [V] in the prompt or generated
        self.counts = np.zeros(vocab, np.int64)      # [V] times generated

    def start(self, prompt: np.ndarray) -> None:
        self.seen[:] = False
        self.counts[:] = 0
        self.seen[np.asarray(prompt, np.int64)] = True

    def add(self, generated: list[int] | np.ndarray) -> None:
        ids = np.asarray(generated, np.int64)
        np.add.at(self.counts, ids, 1)
        self.seen[ids] = True

    def apply(self, logits: np.ndarray, tree: DraftTree) -> np.ndarray:
        """float64 [n, V]: logits [n, V] of the tree's nodes, each row penalised by its node's context."""
        out = np.array(logits, dtype=np.float64)
        path = tree.tokens[1:]                                   # [n-1] the root is committed already
        touched = np.union1d(np.flatnonzero(self.seen), path)    # [t] the only ids a penalty changes
        if touched.size == 0:
            return out
        below = tree.mask()[:, 1:] if tree.size > 1 else np.zeros((1, 0), np.bool_)   # [n, n-1] path of each node
        onehot = path[:, None] == touched[None, :]               # [n-1, t]
        on_path = below.astype(np.int64) @ onehot.astype(np.int64)   # [n, t] occurrences on each node's path
        counts = self.counts[touched][None, :] + on_path         # [n, t]
        seen = self.seen[touched][None, :] | (on_path > 0)
        x = out[:, touched]
        p = self.penalties
        if p.repetition != 1.0:
            x = np.where(seen, np.where(x > 0, x / p.repetition, x * p.repetition), x)
        x = x - p.frequency * counts - p.presence * (counts > 0)
        out[:, touched] = x
        return out
