"""Interleaved call costs of several engines' target graphs: median us per call at each q.

    python scripts/call_costs.py --engine engines/demo --engine OTHER [--q 1,2,4,8,16] [--past 256] [--reps 40]

Every engine is opened (ORT CPU, 2 threads, runspin), its cache filled to --past rows, and the same
q-token chain call (argmax output) is timed on each engine in turn, rep after rep, so the engines
share the machine's noise. Prints one line per q and a JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", action="append", required=True)
    p.add_argument("--q", default="1,2,4,8,16")
    p.add_argument("--past", type=int, default=256)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    from talon_rt.runtime.backends import open_backend
    from talon_rt.runtime.validate import validate_engine
    backends = []
    for engine in a.engine:
        m, _ = validate_engine(engine)
        b = open_backend(m, "ort-cpu", a.threads, "runspin")
        done = 0
        while done < a.past:   # fill the cache in prefill-sized causal calls
            n = min(m.limits.max_prefill_chunk, a.past - done)
            b.target_argmax(np.ones(n, np.int64), done + np.arange(n), np.tril(np.ones((n, n), bool)), done)
            b.commit_target(done, np.arange(n))
            done += n
        backends.append(b)
    rng = np.random.default_rng(0)
    result: dict[str, dict[int, int]] = {e: {} for e in a.engine}
    for q in (int(x) for x in a.q.split(",")):
        ids, pos, mask = rng.integers(0, 1000, q), a.past + np.arange(q), np.tril(np.ones((q, q), bool))
        times: list[list[float]] = [[] for _ in backends]
        for _ in range(a.reps):
            for i, b in enumerate(backends):
                t = time.perf_counter()
                b.target_argmax(ids, pos, mask, a.past)
                times[i].append(time.perf_counter() - t)
        for e, t in zip(a.engine, times):
            result[e][q] = round(float(np.median(t)) * 1e6)
        print(f"q={q}: " + ", ".join(f"{e} {result[e][q]} us" for e in a.engine), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
