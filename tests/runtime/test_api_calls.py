"""Generator.generate / chat per call: sampling options, logprobs, and the text callback."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.decode import Decoded
from talon_rt.runtime.errors import InputError, OptionError

PROMPT = [1, 17, 42, 99, 5]


@pytest.fixture(scope="module")
def gen(tiny_engine):
    with Generator.open(tiny_engine, policy="talon", threads=1) as g:
        yield g


def test_per_call_sampling_equals_the_same_options_at_open(tiny_engine, gen):
    with Generator.open(tiny_engine, policy="talon", threads=1, temperature=1.0, top_p=0.9, seed=3) as seeded:
        want = seeded.generate(PROMPT, max_new_tokens=24).tokens
    got = [gen.generate(PROMPT, max_new_tokens=24, temperature=1.0, top_p=0.9, seed=3).tokens for _ in range(2)]
    assert got == [want, want]                        # a call's seed starts its own random stream
    greedy = gen.generate(PROMPT, max_new_tokens=24).tokens
    assert greedy != want and gen.options.temperature == 0.0   # the Generator's own options are unchanged
    assert gen.generate(PROMPT, max_new_tokens=24, temperature=None).tokens == greedy   # None = the Generator's


def test_per_call_options_are_checked(gen):
    with pytest.raises(OptionError, match=r"unknown per-call option\(s\) \['policy'\]"):
        gen.generate(PROMPT, max_new_tokens=4, policy="ar")
    with pytest.raises(OptionError, match="option top_p: 0.0 outside"):
        gen.generate(PROMPT, max_new_tokens=4, top_p=0.0)
    with pytest.raises(OptionError, match=r"logprobs: expected an integer in \[0, 20\]"):
        gen.generate(PROMPT, max_new_tokens=4, logprobs=21)
    with pytest.raises(InputError, match="on_text must be callable"):
        gen.generate(PROMPT, max_new_tokens=4, on_text="print")


def test_logprobs_are_the_same_under_speculation(tiny_engine, gen):
    with Generator.open(tiny_engine, policy="ar", threads=1) as ar:
        want = ar.generate(PROMPT, max_new_tokens=30, logprobs=4)
    got = gen.generate(PROMPT, max_new_tokens=30, logprobs=4)
    assert got.tokens == want.tokens and len(got.logprobs) == len(got.tokens)
    np.testing.assert_allclose([t.logprob for t in got.logprobs], [t.logprob for t in want.logprobs], atol=1e-4)
    for t in got.logprobs:
        assert [i for i, _ in t.top][0] == t.token and len(t.top) == 4   # greedy: the emitted token is the best
    assert gen.generate(PROMPT, max_new_tokens=4).logprobs is None


TEXT = "naïve café, 日本語 ✓"


def test_on_text_streams_whole_characters(gen, monkeypatch):
    """Tokens that split multi-byte characters: the pieces are whole characters and add up to the text;
    decoding each round's tokens alone garbles them."""
    ids = gen.encode(TEXT)
    rounds = [ids[i:i + 1] for i in range(len(ids))]
    assert "".join(gen.decode(r) for r in rounds) != TEXT, "no character is split: the test would not see it"
    decoder = gen._decoder

    def fake_generate(prompt, max_new_tokens, on_tokens=None, sampler=None, top_logprobs=None):
        for r in rounds:
            on_tokens(r)
        return Decoded(ids, "eos", None)
    monkeypatch.setattr(decoder, "generate", fake_generate)
    pieces: list[str] = []
    res = gen.generate(PROMPT, on_text=pieces.append)
    assert "".join(pieces) == TEXT and res.tokens == ids
    assert all("\ufffd" not in p for p in pieces) and len(pieces) > 1


def test_on_text_returning_false_stops(gen):
    seen: list[str] = []
    res = gen.generate(PROMPT, max_new_tokens=40, on_text=lambda piece: seen.append(piece) or False)
    full = gen.generate(PROMPT, max_new_tokens=40)
    assert res.stop_reason == "cancelled" and len(res.tokens) < len(full.tokens)
    assert "".join(seen) == gen.decode(res.tokens)
