"""The decode loop against an in-memory double of the backend interface (milliseconds per test):
stop rules inside a round (EOS in the middle of an accepted path, max_new_tokens mid-round), the
context's end with a perfect draft, streaming. The acceptance tests run through ORT elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.backends.base import Backend
from talon_rt.runtime.decode import Decoder
from talon_rt.runtime.errors import OptionError
from talon_rt.runtime.manifest import open_manifest
from talon_rt.runtime.options import resolve_options

V, K, H = 320, 32, 64


class TableModel(Backend):
    """Target: the next token is table[last token]; the draft proposes the same (a perfect draft)."""
    name = "double"

    def __init__(self, table: np.ndarray, q_max: int = 128):
        self.table = table
        self.logits = np.zeros((q_max, V), np.float32)
        self.hidden = np.zeros((q_max, H), np.float32)
        self.logp = np.tile(-np.arange(K, dtype=np.float32), (q_max, 1))
        self.writes: list[tuple[int, int]] = []

    def target(self, ids, positions, mask, past_len):
        q = len(ids)
        out = self.logits[:q]
        out[:] = 0.0
        out[np.arange(q), self.table[ids]] = 10.0
        return out

    def commit_target(self, past_len, rows):
        self.writes.append((past_len, len(rows)))

    def draft_fc(self, rows, kept=0):
        return self.hidden[:kept + len(rows)]

    def keep_features(self, rows, at):
        pass

    def draft(self, ids, hidden, positions, mask, past_len):
        q = len(ids)
        assert past_len + q <= 256 and positions.max() < 256
        topk = (self.table[ids][:, None] + np.arange(K)[None, :]) % V
        return topk, self.logp[:q], self.hidden[:q]


def generator(tiny_engine, table: np.ndarray, **options) -> Generator:
    m = open_manifest(tiny_engine, verify_checksums=False)
    opts = resolve_options(m, options)
    return Generator(m, opts, Decoder(TableModel(table), m, opts), tokenizer=None)


def successor_table() -> np.ndarray:
    t = (np.arange(V) + 1) % V
    t[t == 2] = 3          # no EOS unless a test puts one in
    return t


@pytest.mark.parametrize("policy", ["chain", "eagle3", "talon"])
def test_perfect_draft_accepts_whole_paths(tiny_engine, policy):
    gen = generator(tiny_engine, successor_table(), policy=policy, chain_depth=4, budget=16)
    res = gen.generate([1, 5], max_new_tokens=40)
    assert res.tokens == list(range(6, 46))
    assert res.stats.tau >= 3.0, res.stats.tau   # talon N=16, K=10: depth 2 (+ bonus)


@pytest.mark.parametrize("policy", ["ar", "chain", "talon"])
def test_eos_in_the_middle_of_an_accepted_path(tiny_engine, policy):
    table = successor_table()
    table[10] = 2                                  # ... 9 -> 10 -> EOS
    gen = generator(tiny_engine, table, policy=policy, chain_depth=6)
    seen: list[int] = []
    res = gen.generate([1, 5], max_new_tokens=100, on_tokens=seen.extend)
    assert res.tokens == [6, 7, 8, 9, 10, 2] and res.stop_reason == "eos"
    assert seen == res.tokens


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_max_new_tokens_mid_round(tiny_engine, n):
    gen = generator(tiny_engine, successor_table(), policy="chain", chain_depth=5)
    seen: list[int] = []
    res = gen.generate([1, 5], max_new_tokens=n, on_tokens=seen.extend)
    assert res.tokens == list(range(6, 6 + n)) and res.stop_reason == "max_new_tokens"
    assert seen == res.tokens


@pytest.mark.parametrize("policy", ["ar", "chain", "eagle3", "talon"])
def test_context_full_with_a_perfect_draft(tiny_engine, policy):
    gen = generator(tiny_engine, successor_table(), policy=policy, budget=16)
    prompt = [1] + list(range(3, 200))
    res = gen.generate(prompt, max_new_tokens=500)
    assert res.stop_reason == "context_full"
    assert len(prompt) + len(res.tokens) == 256 + 1
    writes = gen._decoder.backend.writes
    assert max(p + a for p, a in writes) == 256       # the cache is full, never past it


def test_stats_are_consistent(tiny_engine):
    gen = generator(tiny_engine, successor_table(), policy="talon", budget=8, root_k=4)
    res = gen.generate([1, 5], max_new_tokens=60)
    s = res.stats
    assert s.generated == 60 == 1 + sum(r.emitted for r in s.per_round)
    assert s.draft_calls == sum(r.draft_calls for r in s.per_round)
    assert s.target_calls == s.rounds + 1
    assert all(r.tree_size <= 8 and r.tree_size == 1 + sum(r.nodes_per_layer) for r in s.per_round)
    assert all(r.depth == len(r.nodes_per_layer) for r in s.per_round)
    assert s.tau == pytest.approx(59 / s.rounds) and 0.0 <= s.host_share <= 1.0


@pytest.mark.parametrize("policy", ["ar", "chain", "talon"])
@pytest.mark.parametrize("calls", [1, 3])
def test_on_tokens_returning_false_cancels(tiny_engine, policy, calls):
    gen = generator(tiny_engine, successor_table(), policy=policy, chain_depth=4)
    seen: list[list[int]] = []

    def on_tokens(new: list[int]) -> bool:
        seen.append(new)
        return len(seen) < calls

    res = gen.generate([1, 5], max_new_tokens=100, on_tokens=on_tokens)
    assert res.stop_reason == "cancelled" and len(seen) == calls
    assert res.tokens == [t for new in seen for t in new] == list(range(6, 6 + len(res.tokens)))
    again = gen.generate([1, 5], max_new_tokens=20)             # the generator is reusable after a cancel
    assert again.tokens == list(range(6, 26)) and again.stop_reason == "max_new_tokens"


def test_a_natural_stop_wins_over_a_cancel(tiny_engine):
    gen = generator(tiny_engine, successor_table(), policy="ar")
    res = gen.generate([1, 5], max_new_tokens=1, on_tokens=lambda new: False)
    assert res.stop_reason == "max_new_tokens" and res.tokens == [6]


def test_with_options_shares_the_sessions(tiny_engine):
    gen = generator(tiny_engine, successor_table(), policy="talon", budget=8)
    ar = gen.with_options(policy="ar", max_new_tokens=5)
    assert ar.options.policy == "ar" and ar.options.budget == 8 and gen.options.policy == "talon"
    assert ar._decoder.backend is gen._decoder.backend
    assert ar.generate([1, 5]).tokens == [6, 7, 8, 9, 10]
    ar.close()                                                    # the sessions stay with `gen`
    assert gen.generate([1, 5], max_new_tokens=5).tokens == [6, 7, 8, 9, 10]
    with pytest.raises(OptionError, match="option threads: fixed when the engine is opened"):
        gen.with_options(threads=1 if gen.options.threads != 1 else 2)   # valid, but not the opened value
    with pytest.raises(OptionError, match="option budget"):
        gen.with_options(budget=10_000)


class Steps:
    """A tracer and a learner in one: the order in which a round's steps end."""

    def __init__(self):
        self.seen: list[str] = []

    def lap(self, step):
        self.seen.append(step)

    def learn(self, tree, acc, greedy):
        self.seen.append("learn")

    def record_round(self, tokens, elapsed):
        self.seen.append("record")


@pytest.mark.parametrize("policy", ["ar", "talon"])
def test_round_steps_in_order_with_tracer_and_learner(tiny_engine, policy):
    gen = generator(tiny_engine, successor_table(), policy=policy, budget=8)
    steps = Steps()
    gen._decoder.tracer = gen._decoder.learner = steps
    res = gen.generate([1, 5], max_new_tokens=20)
    assert res.tokens == list(range(6, 26))
    assert steps.seen == ["build", "verify", "accept", "learn", "record"] * res.stats.rounds
