"""Logits that are not finite are a named EngineError: at open (one probe call, so that a greedy argmax
never turns NaN into token 0 forever), while sampling, and from the draft head; never silent output."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from talon_rt.runtime.backends.ort import OrtBackend
from talon_rt.runtime.errors import EngineError


def test_nan_target_logits_fail_the_open(tiny_engine, monkeypatch):
    real = OrtBackend.target
    monkeypatch.setattr(OrtBackend, "target", lambda self, *a: np.full_like(real(self, *a), np.nan))
    with pytest.raises(EngineError, match=r"the target's logits are not finite \(NaN or inf\)"):
        Generator.open(tiny_engine, threads=1, policy="ar")


def test_nan_logits_while_sampling_are_an_engine_error(tiny_engine, monkeypatch):
    with Generator.open(tiny_engine, threads=1, temperature=0.8, seed=1) as gen:
        real = OrtBackend.target

        def broken(self, *a):
            out = real(self, *a).copy()
            out[-1, 7] = np.inf
            return out
        monkeypatch.setattr(OrtBackend, "target", broken)
        with pytest.raises(EngineError, match="not finite"):
            gen.generate([1, 17, 42], 8)


def test_nan_draft_log_probs_are_an_engine_error(tiny_engine, monkeypatch):
    from talon_rt.runtime.draft import Drafter
    with Generator.open(tiny_engine, threads=1, policy="talon") as gen:
        real = Drafter.expand

        def broken(self, *a):
            ids, logp = real(self, *a)
            return ids, np.full_like(logp, np.nan)
        monkeypatch.setattr(Drafter, "expand", broken)
        with pytest.raises(EngineError, match="the draft head's log-probs are NaN"):
            gen.generate([1, 17, 42], 8)
