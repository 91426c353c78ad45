"""No growth: 200 rounds of the talon loop keep the buffers in place and allocate a bounded,
constant amount of Python memory per round (the per-round stats record and the output list)."""
from __future__ import annotations

import tracemalloc

import numpy as np

from talon_rt.runtime.api import Generator

ROUNDS = 200
PER_ROUND_BYTES = 1024  # a RoundStats record (~200 B) and a few list slots; a leak of a tree is ~10 kB


def test_200_rounds_bounded_allocations_and_fixed_buffers(tiny_engine):
    with Generator.open(tiny_engine, policy="talon", budget=16) as gen:
        backend = gen._decoder.backend
        prompt = [1] + np.random.default_rng(5).integers(3, 320, size=15).tolist()
        gen.generate(prompt, max_new_tokens=32)  # warm: IOBindings per q, node tables
        ids_before = backend.buffer_ids()
        bindings_before = len(backend._target._bindings) + len(backend._draft._bindings)

        mem: list[int] = []
        tracemalloc.start()
        try:
            res = gen.generate(prompt, max_new_tokens=ROUNDS + 1,
                               on_tokens=lambda toks: mem.append(tracemalloc.get_traced_memory()[0]))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        assert res.stats.rounds >= ROUNDS or res.stop_reason != "max_new_tokens"
        assert res.stats.rounds >= 150, res.stats.rounds
        assert backend.buffer_ids() == ids_before
        # new (q, T) shapes may add bindings, but only a bounded number (q <= budget)
        assert len(backend._target._bindings) + len(backend._draft._bindings) <= bindings_before + 32
        late = mem[50:]
        growth = (late[-1] - late[0]) / (len(late) - 1)
        print(f"{res.stats.rounds} rounds: {growth:.0f} B/round retained, peak {peak / 1024:.0f} KiB traced")
        assert growth < PER_ROUND_BYTES, f"{growth:.0f} bytes retained per round"
        assert peak - late[0] < 512 * 1024, f"per-round transient peak {peak - late[0]} bytes"
