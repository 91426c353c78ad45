"""talon.sampling's nucleus filter sorts only the candidates it needs; it must keep exactly the
tokens, and produce exactly the probabilities, of a full descending sort (ties by index)."""
from __future__ import annotations

import numpy as np
import pytest

from talon.sampling import logits_to_probs


def _full_sort_reference(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    order = np.argsort(-p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    before = np.cumsum(ranked, axis=-1) - ranked
    drop = before >= top_p
    drop[..., 0] = False
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.where(drop, 0.0, ranked), axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


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
