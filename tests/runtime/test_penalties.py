"""Repetition / frequency / presence penalties and min-p on the target, end to end through ORT.

Greedy: with penalties on, every speculative policy equals `ar` with the same penalties, token for
token (the draft proposes; verification penalises each node by its own path). An oracle draft that
proposes the penalised `ar` continuation makes long accepted paths, so nodes deep in the tree are
penalised by tokens of their own ancestors. Sampled: the second token's distribution with penalties
and min-p matches `ar`'s (two-sample chi-square on a 24-token vocabulary, fixed seeds).
"""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import OptionError
from talon_rt.talon import PenaltyContext, Penalties, logits_to_probs, root_tree
from talon_rt.talon.tree import DraftTree
from tests.runtime.test_lossless import NEAR_TIE, OracleDraft, prompts
from tests.runtime.test_sampling import POLICIES as SAMPLED_POLICIES
from tests.runtime.test_sampling import PROMPT, two_sample_p

PENALTIES = {"repetition": dict(repetition_penalty=1.3),
             "all": dict(repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=-0.3)}
N_PROMPTS, NEW = 6, 48


# --- the numpy layer ---------------------------------------------------------------------------------

def reference_penalised(logits: np.ndarray, prompt: list[int], generated: list[int], p: Penalties) -> np.ndarray:
    """One row penalised by the definition (a plain loop over the vocabulary)."""
    out = np.array(logits, np.float64)
    for t in range(out.shape[0]):
        if t in prompt or t in generated:
            out[t] = out[t] / p.repetition if out[t] > 0 else out[t] * p.repetition
        c = generated.count(t)
        out[t] -= p.frequency * c + p.presence * (c > 0)
    return out


def test_each_node_is_penalised_by_its_own_path():
    rng = np.random.default_rng(0)
    V = 12
    # root 0 -> (1: tok 4) -> (3: tok 4) ; root -> (2: tok 7) -> (4: tok 5)
    tree = DraftTree(tokens=np.array([9, 4, 7, 4, 5]), parents=np.array([-1, 0, 0, 1, 2]),
                     depth=np.array([0, 1, 1, 2, 2]), logp=np.zeros(5)).validate()
    p = Penalties(repetition=1.5, frequency=0.7, presence=0.4)
    ctx = PenaltyContext(p, V)
    prompt, generated = [1, 2, 2], [9, 3]
    ctx.start(np.array(prompt))
    ctx.add(generated)
    logits = rng.normal(size=(5, V)).astype(np.float32)
    got = ctx.apply(logits, tree)
    paths = {0: [], 1: [4], 2: [7], 3: [4, 4], 4: [7, 5]}
    for node, path in paths.items():
        np.testing.assert_allclose(got[node], reference_penalised(logits[node], prompt, generated + path, p))
    assert np.array_equal(logits, logits.astype(np.float32))   # the input is left alone


def test_min_p_keeps_tokens_within_the_ratio_of_the_best():
    x = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    p = logits_to_probs(x, min_p=0.3)[0]
    assert (p > 0).tolist() == [True, True, True, False]
    np.testing.assert_allclose(p, np.array([0.5, 0.3, 0.15, 0]) / 0.95)
    assert (logits_to_probs(x, min_p=1.0)[0] > 0).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\], got 1.5"):
        logits_to_probs(x, min_p=1.5)


@pytest.mark.parametrize("option, value, match", [
    ("repetition_penalty", 0.0, r"option repetition_penalty: 0.0 must be > 0 \(1 = off\)"),
    ("frequency_penalty", 2.5, r"option frequency_penalty: 2.5 outside \[-2, 2\]"),
    ("presence_penalty", -3, r"option presence_penalty: -3.0 outside \[-2, 2\]"),
    ("min_p", -0.1, r"option min_p: -0.1 outside \[0, 1\]"),
    ("min_p", "0.1", r"option min_p: expected a number, got '0.1'"),
])
def test_bad_sampling_options_are_named(tiny_engine, option, value, match):
    with pytest.raises(OptionError, match=match):
        Generator.open(tiny_engine, **{option: value})
    with Generator.open(tiny_engine, policy="ar") as gen, pytest.raises(OptionError, match=match):
        gen.generate([1, 5, 9], max_new_tokens=2, **{option: value})


# --- greedy: speculative == ar with the same penalties -------------------------------------------------

def check_equal(gen_ar: Generator, prompt: list[int], got: list[int], want: list[int], label: str) -> None:
    """Equal, or the first divergence is at a near-tie of the *penalised* logits (top-2 margin < 1e-4)."""
    if got == want:
        return
    j = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    context = prompt + want[:j]
    q = len(context)
    logits = gen_ar._decoder.backend.target(np.asarray(context, np.int64), np.arange(q, dtype=np.int64),
                                            np.tril(np.ones((q, q), bool)), 0)[-1:]
    o = gen_ar.options
    penalties = PenaltyContext(Penalties(o.repetition_penalty, o.frequency_penalty, o.presence_penalty), logits.shape[1])
    penalties.start(np.asarray(prompt))
    penalties.add(want[:j])
    top2 = np.sort(penalties.apply(logits, root_tree(0))[0])[-2:]
    assert top2[1] - top2[0] < NEAR_TIE, (f"{label}: output diverges from ar at token {j} ({got[j:j + 4]} vs "
                                          f"{want[j:j + 4]}), penalised top-2 margin {top2[1] - top2[0]:.3g}")
    print(f"{label}: near-tie divergence at token {j}, penalised margin {top2[1] - top2[0]:.2e}")


@pytest.fixture(scope="module", params=list(PENALTIES))
def penalised_reference(request, flavour_engine):
    cfg = PENALTIES[request.param]
    gen = Generator.open(flavour_engine, policy="ar", **cfg)
    ps = prompts(gen.manifest.model.vocab_size)[:N_PROMPTS]
    outs = [gen.generate(p, max_new_tokens=NEW).tokens for p in ps]
    with Generator.open(flavour_engine, policy="ar") as plain:
        unpenalised = [plain.generate(p, max_new_tokens=NEW).tokens for p in ps]
    assert sum(a != b for a, b in zip(outs, unpenalised)) >= N_PROMPTS // 2, "the penalties change nothing"
    yield gen, cfg, ps, outs
    gen.close()


@pytest.mark.parametrize("policy", ["chain", "eagle3", "talon"])
def test_greedy_with_penalties_equals_ar(flavour_engine, penalised_reference, policy):
    gen_ar, cfg, ps, outs = penalised_reference
    accepted = 0
    with Generator.open(flavour_engine, policy=policy, **cfg) as gen:
        inner = gen._decoder.backend
        for i, (p, want) in enumerate(zip(ps, outs)):
            res = gen.generate(p, max_new_tokens=NEW)               # the random draft: mostly rejections
            check_equal(gen_ar, p, res.tokens, want, f"{policy} prompt {i}")
            oracle = OracleDraft(inner, p + want)                   # long accepted paths
            gen._decoder.backend = gen._decoder.drafter.backend = oracle
            res = gen.generate(p, max_new_tokens=NEW)
            gen._decoder.backend = gen._decoder.drafter.backend = inner
            check_equal(gen_ar, p, res.tokens, want, f"{policy}+oracle prompt {i}")
            accepted += sum(r.accepted for r in res.stats.per_round)
    assert accepted > 3 * N_PROMPTS, f"{policy}: only {accepted} draft tokens accepted"


def test_per_call_penalties_equal_options_at_open(tiny_engine, penalised_reference):
    _, cfg, ps, outs = penalised_reference
    with Generator.open(tiny_engine, policy="talon") as gen:
        assert gen.generate(ps[0], max_new_tokens=NEW, **cfg).tokens == outs[0]


# --- sampled: the distribution matches ar's ----------------------------------------------------------

N = 800
SAMPLED = dict(temperature=0.7, min_p=0.05, repetition_penalty=2.0, frequency_penalty=1.5, presence_penalty=1.0)


@pytest.fixture(scope="module")
def vocab_engine(tmp_path_factory):
    """test_runtime_sampling's 24-token pair, one flavour (the penalties act on logits, after the graph)."""
    from talon_rt.export.build import ExportOptions, export_engine
    from talon_rt.export.tiny import make_tiny_pair
    root = tmp_path_factory.mktemp("tiny_vocab_penalties")
    model_dir, draft_dir = make_tiny_pair(root / "pair", arch="llama", seed=0, vocab=24, draft_vocab=12, layers=4)
    opts = ExportOptions(dtype="float32", max_seq_len=64, max_tree_tokens=16, max_prefill_chunk=16, k_max=8)
    return export_engine(model_dir, draft_dir, root / "engine", opts, name="tiny-vocab")


def sample_two(engine, policy: str, seed: int, **opts) -> np.ndarray:
    """N x (first, second) token; a generation that ends at EOS after one token repeats it."""
    out = np.zeros((N, 2), np.int64)
    with Generator.open(engine, policy=policy, seed=seed, **{**SAMPLED, **opts}) as gen:
        for i in range(N):
            tokens = gen.generate(PROMPT, max_new_tokens=2).tokens
            out[i] = tokens + tokens[-1:] * (2 - len(tokens))
    return out


def repeats(pairs: np.ndarray) -> np.ndarray:
    """The second token, as 24 + itself when it repeats the first: what the penalties act on."""
    return pairs[:, 1] + 24 * (pairs[:, 1] == pairs[:, 0])


def test_sampled_with_penalties_and_min_p_matches_ar(vocab_engine):
    ref = sample_two(vocab_engine, "ar", seed=100)
    # the penalties change how often ar repeats its first token: the test can tell a missing penalty apart
    plain = sample_two(vocab_engine, "ar", seed=100, repetition_penalty=1.0, frequency_penalty=0.0,
                       presence_penalty=0.0)
    separated = two_sample_p((plain[:, 0] == plain[:, 1]).astype(np.int64), (ref[:, 0] == ref[:, 1]).astype(np.int64), 2)
    print(f"ar with and without penalties: p={separated:.2g}")
    assert separated < 1e-3
    for policy in ("chain", "talon"):
        spec = sample_two(vocab_engine, policy, seed=201, **SAMPLED_POLICIES[policy])
        ps = [two_sample_p(spec[:, 0], ref[:, 0], 24), two_sample_p(repeats(spec), repeats(ref), 48)]
        print(f"{policy}: p(first)={ps[0]:.3f} p(second, repeat or not)={ps[1]:.3f}")
        assert min(ps) > 1e-3, (policy, ps)


# --- talon-rt run flags -------------------------------------------------------------------------------

def test_run_flags_equal_the_api(tiny_engine):
    import json
    import subprocess
    import sys
    from pathlib import Path
    talon_rt = str(Path(sys.executable).parent / "talon-rt")
    flags = ["--repetition-penalty", "1.3", "--frequency-penalty", "0.5", "--presence-penalty", "0.4"]
    with Generator.open(tiny_engine, policy="ar", repetition_penalty=1.3, frequency_penalty=0.5,
                        presence_penalty=0.4) as gen:
        want = gen.generate([1, 5, 9, 40], max_new_tokens=24).tokens
    r = subprocess.run([talon_rt, "run", "--engine", str(tiny_engine), "--prompt-ids", "1,5,9,40",
                        "--max-new-tokens", "24", "--policy", "talon", *flags, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == want
    r = subprocess.run([talon_rt, "run", "--engine", str(tiny_engine), "--prompt-ids", "1", "--min-p", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("option min_p: 2.0 outside [0, 1] (0 = off)"), r.stderr
