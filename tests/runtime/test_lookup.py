"""Context lookup end to end: on prompts that repeat themselves, `lookup` and `talon-lookup` emit
exactly `ar`'s greedy output, the lookup's nodes are drafted and accepted (round stats), `lookup`
never opens the draft side, and `talon-lookup` rounds that the lookup fills make no draft call."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.draft import Drafter
from tests.runtime.test_lossless import check_equal

NEW = 64
EXPAND = Drafter.expand


def repeating_prompts(vocab: int) -> list[list[int]]:
    """A random phrase said three times (sometimes with a changed token), then its first tokens again."""
    rng = np.random.default_rng(77)
    out = []
    for i in range(8):
        phrase = rng.integers(3, vocab, size=int(rng.integers(4, 12))).tolist()
        again = list(phrase)
        if i % 2:
            again[int(rng.integers(0, len(again)))] = int(rng.integers(3, vocab))
        out.append([1] + phrase + phrase + again + phrase[:2])
    return out


@pytest.fixture(scope="module")
def reference(flavour_engine):
    gen = Generator.open(flavour_engine, policy="ar")
    ps = repeating_prompts(gen.manifest.model.vocab_size)
    outs = [gen.generate(p, max_new_tokens=NEW).tokens for p in ps]
    yield gen, ps, outs
    gen.close()


@pytest.mark.parametrize("policy", ["lookup", "talon-lookup"])
def test_lookup_greedy_equals_ar_and_the_lookup_fires(flavour_engine, reference, policy):
    gen_ar, ps, outs = reference
    notes, proposed, accepted, headless = [], 0, 0, 0
    with Generator.open(flavour_engine, policy=policy, budget=8) as gen:
        assert (gen._decoder.drafter is None) == (policy == "lookup")
        for i, (p, want) in enumerate(zip(ps, outs)):
            res = gen.generate(p, max_new_tokens=NEW)
            note = check_equal(gen_ar, p, res.tokens, want, f"{policy} prompt {i}")
            if note:
                notes.append(note)
            s = res.stats.summary()
            proposed, accepted = proposed + s["lookup_proposed"], accepted + s["lookup_accepted"]
            headless += sum(1 for r in res.stats.per_round if r.draft_calls == 0 and r.tree_size > 1)
            assert all(r.lookup_accepted <= min(r.lookup_proposed, r.accepted) for r in res.stats.per_round)
            # a round without a draft call defers its feed to the next one: no draft call of its own
            assert res.stats.draft_calls == sum(r.draft_calls for r in res.stats.per_round)
    assert proposed > 0 and accepted > len(ps), f"{policy}: lookup proposed {proposed}, accepted {accepted}"
    if policy == "talon-lookup":
        assert headless > 0, "no round was left to the lookup alone"
    print("\n".join(notes) or f"{policy}: all {len(ps)} prompts equal; lookup proposed {proposed}, "
          f"accepted {accepted}; {headless} rounds without a draft call")


def root_children(gen: Generator, prompts: list[list[int]], monkeypatch) -> list[np.ndarray]:
    """The head's log-probs for the root's children, every round that drafted, over the prompts."""
    seen: list[np.ndarray] = []
    expand = EXPAND

    def recording(self, tree, rows):
        ids, logp = expand(self, tree, rows)
        if rows.shape[0] == 1 and rows[0] == 0:
            seen.append(np.array(logp[0]))
        return ids, logp
    monkeypatch.setattr(Drafter, "expand", recording)
    for p in prompts:
        gen.generate(p, max_new_tokens=NEW)
    return seen


def test_deferred_feed_keeps_the_draft_in_step(flavour_engine, reference, monkeypatch):
    """The head sees the same rows whether a round's feed ran at once or joined the next round's
    feed: its root children's log-probs agree round for round."""
    _, ps, _ = reference
    with Generator.open(flavour_engine, policy="talon-lookup", budget=8) as gen:
        deferred = root_children(gen, ps, monkeypatch)
        assert gen._decoder.drafter.calls > 0

    def at_once(self):
        self.run_feed()
    monkeypatch.setattr(Drafter, "defer_feed", at_once)
    with Generator.open(flavour_engine, policy="talon-lookup", budget=8) as gen:
        now = root_children(gen, ps, monkeypatch)
    assert len(now) == len(deferred)
    for a, b in zip(now, deferred):
        np.testing.assert_allclose(a, b, atol=1e-4)
