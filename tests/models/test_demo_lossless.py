"""Greedy losslessness on the committed stdlib pair (models/stdlib-pair): `talon`, `eagle3` and
`talon-cost` emit exactly what `ar` emits, on 20 HumanEval prompts x 128 new tokens, for both graph
flavours and for the int4-draft engine.

Unlike the tiny random pair, the demo head agrees with its target ~70 % of the time, so these runs
accept long paths through real trees. A divergence is tolerated only at a float near-tie of the
target (checked and reported by `check_equal`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.bench.datasets import load_prompts
from tests.runtime.test_lossless import check_equal

DEMO = Path(__file__).resolve().parents[2] / "models" / "stdlib-pair"
N_PROMPTS, NEW = 20, 128


@pytest.fixture(scope="module", params=["gqa", "standard", "gqa-int4"])
def demo_engine(request, tmp_path_factory):
    from talon_rt.export.build import ExportOptions, export_engine
    out = tmp_path_factory.mktemp("demo_engine") / f"demo-{request.param}"
    flavour, _, weights = request.param.partition("-")   # gqa-int4: the int4 draft make demo ships
    opts = ExportOptions(flavour=flavour, draft_weights=weights or "float")
    return export_engine(DEMO / "target", DEMO / "eagle3", out, opts, name="demo")


@pytest.fixture(scope="module")
def reference(demo_engine):
    gen = Generator.open(demo_engine, policy="ar")
    prompts = [gen.encode(p.text) for p in load_prompts("humaneval", limit=N_PROMPTS)]
    outs = [gen.generate(p, max_new_tokens=NEW).tokens for p in prompts]
    yield gen, prompts, outs
    gen.close()


@pytest.mark.parametrize("policy", ["talon", "eagle3", "talon-cost"])
def test_demo_pair_greedy_equals_ar(demo_engine, reference, policy):
    gen_ar, prompts, outs = reference
    notes, emitted, rounds = [], 0, 0
    with Generator.open(demo_engine, policy=policy) as gen:
        for i, (p, want) in enumerate(zip(prompts, outs)):
            res = gen.generate(p, max_new_tokens=NEW)
            note = check_equal(gen_ar, p, res.tokens, want, f"{policy} humaneval/{i}")
            if note:
                notes.append(note)
            emitted += sum(r.emitted for r in res.stats.per_round)
            rounds += res.stats.rounds
    tau = emitted / rounds
    assert tau > 1.5, f"{policy}: the demo head should be accepted often, got tau {tau:.2f}"
    print("\n".join(notes) or f"{policy}: all {len(prompts)} prompts equal ar, tau {tau:.2f}")
