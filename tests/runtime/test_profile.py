"""`python -m talon_rt.runtime.profile`: the round profile and call costs run on any engine directory and add up."""
from __future__ import annotations

import json

import pytest

from talon_rt.runtime.profile import ENGINE_KEYS, HOST_KEYS, main


@pytest.mark.parametrize("engine", ["tiny_engine", "tiny_engine_gqa"])
def test_profile_runs_and_adds_up(request, engine, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["--engine", str(request.getfixturevalue(engine)), "--budgets", "8", "--new-tokens", "8",
                 "--reps", "2", "--past", "32", "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["flavour"] == ("gqa" if engine.endswith("gqa") else "standard")
    assert set(r["rounds"]) == {"ar", "talon N=8", "talon-cost N=32"}
    talon = r["rounds"]["talon N=8"]
    assert talon["median_us"]["verify_call"] > 0 and talon["median_us"]["draft_first"] > 0
    assert r["rounds"]["ar"]["median_us"]["draft_first"] == 0
    for rec in r["rounds"].values():
        parts = sum(rec["median_us"][k] for k in ENGINE_KEYS + HOST_KEYS)
        assert parts == pytest.approx(rec["median_us"]["round"], rel=0.5)   # medians of parts, roughly the whole
    assert set(r["calls"]["target_argmax"]) == {"1", "2", "4", "8", "16", "32", "64"}
    assert "verify_call" in capsys.readouterr().out
