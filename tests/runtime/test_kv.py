"""KV state after speculative rounds equals a fresh causal prefill of the committed tokens: the
target's rows (commit = gather of the accepted path, often not a prefix) and the draft's committed
rows (each round's first call over the accepted tokens with the target's tree-verified features)."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from tests.runtime.test_lossless import OracleDraft


def kv(gen: Generator, rows: int, which: str) -> np.ndarray:
    b = gen._decoder.backend
    b = getattr(b, "inner", b)
    m = gen.manifest
    if which == "target":
        cache = b.kv_t.reshape(2 * m.model.num_layers, m.model.num_kv_heads, m.limits.max_seq_len, -1)
    else:
        cache = b.kv_d.reshape(2, m.draft.num_kv_heads, m.limits.max_seq_len, -1)
    return cache[:, :, :rows].copy()


@pytest.mark.parametrize("policy", ["eagle3", "talon"])
def test_caches_equal_a_fresh_prefill(flavour_engine, policy):
    prompt = [1] + np.random.default_rng(21).integers(3, 320, size=30).tolist()
    with Generator.open(flavour_engine, policy="ar") as ref:
        want = ref.generate(prompt, max_new_tokens=60).tokens
    with Generator.open(flavour_engine, policy=policy) as gen:
        oracle = OracleDraft(gen._decoder.backend, prompt + want)
        gen._decoder.backend = gen._decoder.drafter.backend = oracle
        res = gen.generate(prompt, max_new_tokens=60)
        assert res.tokens == want and oracle.nonprefix_commits > 0
        # a round cut by max_new_tokens commits rows past the returned tokens: compare what both have
        P = min(gen._decoder.P, len(prompt) + len(res.tokens) - 1)
        Pd = min(gen._decoder.drafter.committed, P - 1)
        spec_t, spec_d = kv(gen, P, "target"), kv(gen, Pd, "draft")
    seq = prompt + res.tokens
    with Generator.open(flavour_engine, policy=policy) as fresh:
        dec = fresh._decoder
        dec.prefill(np.asarray(seq[:P], np.int64))
        dec.drafter.run_feed()
        fresh_t, fresh_d = kv(fresh, P, "target"), kv(fresh, Pd, "draft")
    assert P > len(prompt) + 40 and Pd > len(prompt) + 30
    np.testing.assert_allclose(spec_t, fresh_t, atol=1e-4)
    np.testing.assert_allclose(spec_d, fresh_d, atol=1e-4)
