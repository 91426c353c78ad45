"""A measured gate over ways of building a round: use the one that emits the most tokens per second
(docs/design.md §4.8).

A round can be built several ways (arms), dearest last: the root alone (`ar`'s round), the context
lookup's candidates (no draft call), or a tree from the draft head (draft calls and a wider verify
call). Which pays depends on the text (the head's agreement, repeated spans), the machine and the
engine, so the gate measures every arm as it goes, with exponential moving averages of each arm's
round time and tokens per round, and builds the next round with

    the arm of highest  tokens(arm) / time(arm)

Every arm runs `warmup` rounds first (dearest first). An arm that is not the best is probed once every
`interval` rounds; a probe that loses by `margin` doubles its arm's interval up to `max_probe` (an arm
that never pays costs at most ~1/max_probe of its overhead), one that wins by `margin` makes it the
best, one in between is probed again after the same interval. The best arm is dropped for another
once that one's last measured rate is higher by `margin`. Tokens are never affected: every arm's
round is verified as any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from talon_rt.talon.nodes import Expand
from talon_rt.talon.tree import BuildInfo, DraftTree, root_tree
from talon_rt.talon.verify import Acceptance


@dataclass(frozen=True)
class GateConfig:
    warmup: int = 3        # rounds each arm runs before the first decision
    probe: int = 8         # rounds between probes of an arm that is not the best (doubles per lost probe)
    max_probe: int = 64    # the probe interval's cap: an arm that never pays costs <= 1/64 of its overhead
    decay: float = 0.9     # weight of the past in the moving averages (one round moves them by 1/10)
    margin: float = 0.05   # a probed arm takes over only when its rate beats the best's by this much

    def __post_init__(self) -> None:
        for name in ("warmup", "probe", "max_probe"):
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
    """The gate's state over `arms` arms (0 = the cheapest). `choose()` picks the next round's arm;
    `record` is told how it went."""

    arms: int = 2
    config: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if isinstance(self.arms, bool) or not isinstance(self.arms, int) or self.arms < 1:
            raise ValueError(f"gate: arms must be an integer >= 1, got {self.arms!r}")
        c = self.config
        self.time = [Average(c.decay) for _ in range(self.arms)]
        self.tokens = [Average(c.decay) for _ in range(self.arms)]
        self.interval = [c.probe] * self.arms   # rounds between probes of each arm while it is not the best
        self.waited = [0] * self.arms           # rounds since each arm last ran
        self.best = self.arms - 1
        self.warm = False
        self.pinned: int | None = None          # an arm every round takes regardless of time (seeded sampling)

    def rate(self, arm: int) -> float:
        """Tokens per unit of time of `arm`'s recent rounds."""
        t = self.time[arm].value
        return self.tokens[arm].value / t if t > 0 else 0.0

    def choose(self) -> int:
        """The arm that builds the next round."""
        if self.pinned is not None:
            return self.pinned
        c = self.config
        for arm in reversed(range(self.arms)):   # warm-up, dearest first
            if self.time[arm].n < c.warmup:
                return arm
        due = [a for a in range(self.arms) if a != self.best and self.waited[a] >= self.interval[a]]
        return due[0] if due else self.best

    def record(self, arm: int, tokens: int, elapsed: float) -> None:
        """A round of `arm` emitted `tokens` in `elapsed` time (any unit, the same for all)."""
        c = self.config
        self.time[arm].add(elapsed)
        self.tokens[arm].add(tokens)
        self.waited = [0 if a == arm else w + 1 for a, w in enumerate(self.waited)]
        if any(t.n < c.warmup for t in self.time):
            return
        if not self.warm:                         # every arm measured: the first choice
            self.warm, self.best = True, max(range(self.arms), key=self.rate)
            return
        if arm != self.best:                      # a probe
            if self.rate(arm) >= (1 + c.margin) * self.rate(self.best):
                self.best, self.interval[arm] = arm, c.probe
            elif (1 + c.margin) * self.rate(arm) < self.rate(self.best):   # lost clearly: wait longer
                self.interval[arm] = min(2 * self.interval[arm], c.max_probe)
            return
        rival = max(range(self.arms), key=self.rate)
        if self.rate(rival) >= (1 + c.margin) * self.rate(arm):   # the best fell behind another's last rate
            self.best, self.interval[arm] = rival, c.probe


class GateLearner:
    """The gated policy's `Learner`: the gate hears every round, each arm's own learner its rounds."""

    def __init__(self, gate: DraftGate, learners: list):
        self.gate, self.learners, self.arm = gate, learners, gate.arms - 1

    def learn(self, tree: DraftTree, acc: Acceptance, greedy: bool) -> None:
        if self.learners[self.arm] is not None:
            self.learners[self.arm].learn(tree, acc, greedy)

    def record_round(self, tokens: int, elapsed: float) -> None:
        self.gate.record(self.arm, tokens, elapsed)
        if self.learners[self.arm] is not None:
            self.learners[self.arm].record_round(tokens, elapsed)


class GatedPolicy:
    """Policies (`arms`, cheapest first; None: the root alone) behind a `DraftGate`: each round is
    built by the arm the gate chooses. Arms that read the text share one history.

    Seeded sampling repeats itself only if every round is built the same way, and the gate's choices
    follow measured time: `seeded(True)` (the decoder calls it for a generation that samples with a
    seed) pins every round to `seeded_arm`, an arm whose trees depend on the text alone."""

    def __init__(self, arms: list, gate: DraftGate | None = None, learner: GateLearner | None = None,
                 seeded_arm: int = 0):
        self.arms = list(arms)
        if not 0 <= seeded_arm < len(self.arms):
            raise ValueError(f"seeded_arm {seeded_arm} outside the {len(self.arms)} arms")
        self.seeded_arm = seeded_arm
        self.gate = gate if gate is not None else DraftGate(len(self.arms))
        if self.gate.arms != len(self.arms):
            raise ValueError(f"gate over {self.gate.arms} arms, {len(self.arms)} policies given")
        self.learner = learner if learner is not None else GateLearner(
            self.gate, [getattr(p, "learner", None) for p in self.arms])
        histories = {id(p.history): p.history for p in self.arms if p is not None and p.history is not None}
        if len(histories) > 1:
            raise ValueError("gated policies that read the text must share one history")
        self.history = next(iter(histories.values()), None)

    def __repr__(self) -> str:
        return f"GatedPolicy({self.arms!r}, {self.gate.config!r}, seeded_arm={self.seeded_arm})"

    def seeded(self, on: bool) -> None:
        """Pin every round to `seeded_arm` (on) or let the gate choose again (off)."""
        self.gate.pinned = self.seeded_arm if on else None

    def build(self, root_token: int, expand: Expand) -> DraftTree:
        arm = self.learner.arm = self.gate.choose()
        policy = self.arms[arm]
        if policy is None:
            return root_tree(root_token, BuildInfo(draft_calls=0, nodes_per_layer=(), drafted=0))
        return policy.build(root_token, expand)

    def footprint(self) -> tuple[int, int]:
        feet = [p.footprint() for p in self.arms if p is not None]
        return max([1] + [f[0] for f in feet]), max([0] + [f[1] for f in feet])

    def capped(self, room: int) -> GatedPolicy:
        return GatedPolicy([None if p is None else p.capped(room) for p in self.arms], self.gate, self.learner,
                           self.seeded_arm)
