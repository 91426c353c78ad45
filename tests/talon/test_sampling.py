"""talon_rt.talon.sampling's nucleus filter sorts only the candidates it needs, and sample_token reads only a
filtered row's nonzero tokens; both must give exactly the tokens and probabilities of the full-sort
implementation kept here as the reference (descending sort, ties by index, sums in that order)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talon_rt.talon import sampling
from talon_rt.talon.sampling import logits_to_probs, sample_token

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True)


def _full_sort_reference(logits: np.ndarray, temperature: float, top_p: float, top_k: int = 0,
                         min_p: float = 0.0) -> np.ndarray:
    """logits_to_probs as it was before the candidate selection: every row fully sorted."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = np.partition(x, v - top_k, axis=-1)[..., v - top_k, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(ranked, axis=-1) - ranked
        drop = before >= top_p
        drop[..., 0] = False
        out = np.empty_like(p)
        np.put_along_axis(out, order, np.where(drop, 0.0, ranked), axis=-1)
        p = out / out.sum(axis=-1, keepdims=True)
    if min_p > 0.0:
        p = np.where(p < min_p * p.max(axis=-1, keepdims=True), 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def _reference_sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, cdf.shape[0] - 1)


@pytest.mark.parametrize("top_p", [1e-9, 0.3, 0.9, 0.95, 0.999999, 1 - 1e-12])
@pytest.mark.parametrize("shape", ["peaked", "flat", "ties", "uniform"])
def test_nucleus_equals_a_full_sort(top_p, shape):
    rng = np.random.default_rng(7)
    v = 49152
    logits = {"peaked": rng.normal(0, 4, (3, v)), "flat": rng.normal(0, 0.05, (3, v)),
              "ties": np.round(rng.normal(0, 2, (3, v)), 1), "uniform": np.zeros((3, v))}[shape]
    got = logits_to_probs(logits, 0.7, top_p)
    want = _full_sort_reference(logits, 0.7, top_p)
    assert np.array_equal(got, want)
    assert got.shape == (3, v) and np.allclose(got.sum(-1), 1.0)


def test_nucleus_on_a_single_row_and_a_tree_of_rows():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (2, 5, 1000))
    assert np.array_equal(logits_to_probs(logits, 0.7, 0.95), _full_sort_reference(logits, 0.7, 0.95))
    assert np.array_equal(logits_to_probs(logits[0, 0], 0.7, 0.95), _full_sort_reference(logits[0, 0], 0.7, 0.95))


def test_the_logits_are_not_modified():
    logits = np.random.default_rng(1).normal(0, 3, (4, 500)).astype(np.float32)
    before = logits.copy()
    logits_to_probs(logits, 0.7, 0.9, 20, 0.05)
    assert np.array_equal(logits, before)


@st.composite
def rows(draw):
    """Logits [r, V] of several kinds (ties, quantised, peaked, flat, a few tokens far ahead) and the
    filter settings; top_p is sometimes exactly a cumulative sum of the sorted probabilities."""
    v = draw(st.sampled_from([1, 2, 3, 7, 64, 65, 200, 1024, 1025, 2000, 6000, 12000]))
    r = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["ints", "quantised", "peaked", "flat", "spikes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "ints":
        logits = rng.integers(-3, 4, (r, v)).astype(np.float64)
    elif kind == "quantised":
        logits = np.round(rng.normal(0, 2, (r, v)), 1)
    elif kind == "spikes":
        logits = np.round(rng.normal(0, 0.1, (r, v)), 2)
        logits[:, rng.integers(0, v, 4)] = rng.choice([8.0, 10.0, 12.0], 4)
    else:
        logits = rng.normal(0, {"peaked": 3.0, "flat": 0.05}[kind], (r, v))
    temperature = draw(st.sampled_from([0.3, 0.7, 1.0, 1.5]))
    top_k = draw(st.sampled_from([0, 0, 1, 2, 10, 100, v, v + 1]))
    min_p = draw(st.sampled_from([0.0, 0.0, 1e-4, 0.05, 0.5, 1.0]))
    if draw(st.booleans()):
        top_p = draw(st.floats(0.0, 1.0, exclude_min=True))
    else:   # the mass before some ranked token of the first row: the cut lands on an equality
        p = _full_sort_reference(logits[0], temperature, 1.0, top_k)
        ranked = -np.sort(-p)
        before = np.cumsum(ranked) - ranked
        top_p = float(before[draw(st.integers(0, v - 1))])
        top_p = top_p if 0.0 < top_p <= 1.0 else 1.0
    return logits, temperature, top_p, top_k, min_p


@PROPERTY
@given(rows())
def test_filters_equal_the_full_sort_reference(case):
    logits, temperature, top_p, top_k, min_p = case
    got = logits_to_probs(logits, temperature, top_p, top_k, min_p)
    want = _full_sort_reference(logits, temperature, top_p, top_k, min_p)
    assert got.dtype == np.float64 and np.array_equal(got, want)


@PROPERTY
@given(rows(), st.integers(0, 2**32 - 1))
def test_sample_token_draws_the_reference_token(case, seed):
    logits, temperature, top_p, top_k, min_p = case
    probs = logits_to_probs(logits[0], temperature, top_p, top_k, min_p)
    residual = probs.copy()
    residual[np.argmax(probs)] = 0.0   # a rejected token, as verify_sample's residual
    for row in (probs, residual) if residual.sum() > 0.0 else (probs,):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert [sample_token(row, a) for _ in range(5)] == [_reference_sample_token(row, b) for _ in range(5)]


def test_candidates_grow_until_the_nucleus_fits():
    """A row whose nucleus holds many tokens: the candidate set grows past the first ones (by a
    partition of the rest, or to all V), and ties at the cut keep the lowest ids."""
    v = 20000
    p = np.full(v, 1.0 / v)
    for top_p in (0.1, 0.3, 0.5, 0.75, 1 - 1e-12):
        got = p.copy()
        sampling._nucleus(got, top_p, np.empty((2, v)))
        kept = np.flatnonzero(got)
        assert kept.tolist() == list(range(kept.shape[0])) and kept.shape[0] > sampling.FIRST_CANDIDATES
        want = _full_sort_reference(np.zeros(v), 1.0, top_p)
        assert np.array_equal(got / got.sum(), want)
