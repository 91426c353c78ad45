"""Run one peer configuration over a job's prompts and write the timings as JSON.

    python -m talon_rt.runtime.bench.peers.worker JOB.json OUT.json

A family module (`ortgenai`, `hf`) exposes `open_peer(job) -> generate(ids, max_new_tokens)`,
which returns (generated ids, target calls or None). Timing is the wall clock of one generate call,
prefill included, as for talon-rt.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from talon_rt.runtime.bench.peers import PeerUnavailable


def run_job(job: dict) -> dict:
    try:
        family = importlib.import_module(f"talon_rt.runtime.bench.peers.{job['family']}")
        generate, detail = family.open_peer(job)
    except PeerUnavailable as e:
        return {"status": f"unavailable: {e}"}
    except ImportError as e:
        return {"status": f"unavailable: {e}"}
    try:
        prompts = job["prompts"]
        for p in prompts[:job.get("warmup", 1)]:
            generate(p["ids"], job["max_new_tokens"])
        runs = []
        for p in prompts:
            t0 = time.perf_counter()
            tokens, calls = generate(p["ids"], job["max_new_tokens"])
            runs.append({"dataset": p["dataset"], "id": p["id"], "new_tokens": len(tokens),
                         "wall_s": time.perf_counter() - t0, "target_calls": calls,
                         "tokens": [int(t) for t in tokens]})
    except Exception as e:  # reported as the peer's status: a row with a reason, never a hole
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    return {"status": "ok", "runs": runs, "detail": detail}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
