"""Per-round records and the per-run summary (docs/design.md §6: speed-up ~ tau / (1 + c*delta))."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundStats:
    tree_size: int                      # nodes verified, root included
    depth: int                          # deepest node
    nodes_per_layer: tuple[int, ...]    # final tree nodes at depth 1, 2, ...
    draft_calls: int                    # draft engine calls of this round (the first one included)
    accepted: int                       # accepted draft tokens (bonus excluded)
    emitted: int                        # tokens streamed this round (accepted + bonus, after stops)
    engine_s: float                     # time inside engine calls (draft, target, commit)
    host_s: float                       # the rest of the round: policy, verification, bookkeeping
    pool_truncated: int = 0             # talon: parents whose k_max children all passed the gate
    lookup_proposed: int = 0            # tree nodes the context lookup proposed (head duplicates included)
    lookup_accepted: int = 0            # accepted draft tokens among them


@dataclass(frozen=True)
class RunStats:
    policy: str
    prompt_tokens: int
    generated: int                      # tokens returned (the prefill's first token included)
    rounds: int                         # verify calls = decode target calls
    target_calls: int                   # rounds + prefill chunks
    draft_calls: int                    # all draft calls, prefill feed included
    prefill_s: float
    decode_s: float
    engine_s: float                     # sum of the rounds' engine time
    host_s: float                       # sum of the rounds' host time
    per_round: tuple[RoundStats, ...] = field(repr=False)

    @property
    def tau(self) -> float:
        """Mean accepted length (MAT): tokens emitted per verify call."""
        return sum(r.emitted for r in self.per_round) / self.rounds if self.rounds else 0.0

    @property
    def delta(self) -> float:
        """Draft calls per verify call."""
        return sum(r.draft_calls for r in self.per_round) / self.rounds if self.rounds else 0.0

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """End to end: generated tokens over prefill + decode time."""
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens emitted by rounds over decode time (prefill excluded)."""
        n = sum(r.emitted for r in self.per_round)
        return n / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def host_share(self) -> float:
        """Host (non-engine) share of the rounds' time."""
        total = self.engine_s + self.host_s
        return self.host_s / total if total > 0 else 0.0

    @property
    def host_us_per_round(self) -> float:
        return 1e6 * self.host_s / self.rounds if self.rounds else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no per-round records)."""
        return {
            "policy": self.policy, "tau": self.tau, "delta": self.delta,
            "tokens_per_s": self.tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "rounds": self.rounds, "generated": self.generated, "prompt_tokens": self.prompt_tokens,
            "target_calls": self.target_calls, "draft_calls": self.draft_calls,
            "prefill_s": self.prefill_s, "decode_s": self.decode_s, "engine_s": self.engine_s,
            "host_s": self.host_s, "host_share": self.host_share,
            "host_us_per_round": self.host_us_per_round,
            "mean_tree_size": (sum(r.tree_size for r in self.per_round) / self.rounds if self.rounds else 0.0),
            "lookup_proposed": sum(r.lookup_proposed for r in self.per_round),
            "lookup_accepted": sum(r.lookup_accepted for r in self.per_round),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["per_round"] = [asdict(r) for r in self.per_round]
        return d
