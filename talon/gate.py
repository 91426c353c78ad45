"""A measured gate in front of a drafting policy: draft only while drafting pays (docs/design.md §4).

A drafted round costs its draft calls and a wider verify call; it pays when the tokens it emits per
unit of time beat a plain one-token round's. Neither side is known in advance (the head's agreement
depends on the text, the costs on the machine and the engine), so the gate measures both as it goes:

    draft this round  iff  tokens(drafted) / time(drafted)  >=  1 / time(plain)

with exponential moving averages over the rounds of each kind (a closed gate reopens only when the
left side wins by a 5 % margin, so one lucky probe does not). While drafting loses, the rounds are
plain (no draft call, no tree) and one round in `probe` drafts anyway to see whether the text has
turned predictable; each probe that still loses doubles the interval up to `max_probe`, so a head
that never pays costs at most ~1/max_probe of the draft's overhead. While drafting wins, one round
in `refresh` is plain to keep the other side's time current. Tokens are never affected: a plain
round verifies the root alone, exactly as `ar`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from talon_rt.talon.nodes import Expand
from talon_rt.talon.tree import BuildInfo, DraftTree, root_tree
from talon_rt.talon.verify import Acceptance


@dataclass(frozen=True)
class GateConfig:
    warmup: int = 3        # drafted rounds measured before the first decision (then one plain round)
    probe: int = 8         # plain rounds between probes once drafting lost (doubles per lost probe)
    max_probe: int = 64    # the probe interval's cap: a head that never pays costs <= 1/64 of its overhead
    refresh: int = 32      # drafted rounds between plain ones that re-time the other side
    decay: float = 0.9     # weight of the past in the moving averages (a probe moves them by 1/10)
    margin: float = 0.05   # a closed gate reopens only when drafting beats plain rounds by this much

    def __post_init__(self) -> None:
        for name in ("warmup", "probe", "max_probe", "refresh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"gate: {name} must be an integer >= 1, got {v!r}")
        if self.max_probe < self.probe:
            raise ValueError(f"gate: max_probe ({self.max_probe}) < probe ({self.probe})")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"gate: decay must lie in [0, 1), got {self.decay!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"gate: margin must lie in [0, 1), got {self.margin!r}")


class Average:
    """An exponential moving average; the first sample sets it."""

    def __init__(self, decay: float):
        self.decay, self.value, self.n = decay, 0.0, 0

    def add(self, x: float) -> None:
        self.value = x if self.n == 0 else self.decay * self.value + (1 - self.decay) * x
        self.n += 1


@dataclass
class DraftGate:
    """The gate's state. `drafts()` decides the next round; `record` is told how it went."""

    config: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        c = self.config
        self.drafted_time, self.drafted_tokens, self.plain_time = Average(c.decay), Average(c.decay), Average(c.decay)
        self.interval = c.probe       # plain rounds before the next probe while drafting loses
        self.since = 0                # rounds of the other kind since the last switch point
        self.open = True

    def pays(self, margin: float = 0.0) -> bool:
        """Drafted rounds' tokens per time >= (1 + margin) x a plain round's (1 token per its time)."""
        return self.drafted_tokens.value * self.plain_time.value >= (1 + margin) * self.drafted_time.value

    def drafts(self) -> bool:
        """Whether the next round drafts."""
        c = self.config
        if self.drafted_time.n < c.warmup:
            return True
        if self.plain_time.n == 0:
            return False
        if self.open:
            return self.since < c.refresh
        return self.since >= self.interval

    def record(self, drafted: bool, tokens: int, elapsed: float) -> None:
        """A round (drafted or plain) emitted `tokens` in `elapsed` time (any unit, the same for all)."""
        c = self.config
        if drafted:
            self.drafted_time.add(elapsed)
            self.drafted_tokens.add(tokens)
        else:
            self.plain_time.add(elapsed)
        if self.drafted_time.n < c.warmup or self.plain_time.n == 0:
            return
        # hysteresis: an open gate stays open while drafting pays at all, a closed one needs the margin
        was_open, self.open = self.open, self.pays(0.0 if self.open else c.margin)
        if self.open:
            self.interval = c.probe
            self.since = self.since + 1 if drafted and was_open else 0
        elif drafted and not was_open:      # a probe that lost: wait longer for the next one
            self.interval = min(2 * self.interval, c.max_probe)
            self.since = 0
        else:
            self.since = self.since + 1 if not drafted else 0


class GateLearner:
    """The gated policy's `Learner`: the gate hears every round, the inner policy's learner the
    rounds it built."""

    def __init__(self, gate: DraftGate, inner):
        self.gate, self.inner, self.drafted = gate, inner, False

    def learn(self, tree: DraftTree, acc: Acceptance, greedy: bool) -> None:
        if self.drafted and self.inner is not None:
            self.inner.learn(tree, acc, greedy)

    def record_round(self, tokens: int, elapsed: float) -> None:
        self.gate.record(self.drafted, tokens, elapsed)
        if self.drafted and self.inner is not None:
            self.inner.record_round(tokens, elapsed)


class GatedPolicy:
    """`inner` (any drafting policy) behind a `DraftGate`: a round the gate closes is the root alone,
    with no draft call."""

    def __init__(self, inner, gate: DraftGate | None = None, learner: GateLearner | None = None):
        self.inner = inner
        self.gate = gate if gate is not None else DraftGate()
        self.learner = learner if learner is not None else GateLearner(self.gate, inner.learner)
        self.history = inner.history

    def __repr__(self) -> str:
        return f"GatedPolicy({self.inner!r}, {self.gate.config!r})"

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        self.learner.drafted = self.gate.drafts()
        if self.learner.drafted:
            return self.inner.build(root_token, expand)
        return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))

    def footprint(self) -> tuple[int, int]:
        return self.inner.footprint()

    def capped(self, room: int) -> GatedPolicy:
        return GatedPolicy(self.inner.capped(room), self.gate, self.learner)
