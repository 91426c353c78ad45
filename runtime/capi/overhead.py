"""Per-call overhead of the C API against calling the Python runtime directly.

    make capi && .venv/bin/python -m talon_rt.runtime.capi.overhead --engine engines/demo --calls 300

Times the same calls both ways: a one-token generation (`policy=ar`, one intra-op thread, so the call
is one prefill and the crossing cost is visible) and a tokenizer call (`encode`, almost nothing but the
crossing). The C side is examples/overhead.c linked against libtalon_rt.so; the Python side is
talon_rt.runtime.api.Generator in this process. The two sides alternate in blocks so that a busy machine
slows both alike; reported: the median of the block medians of each side, and the median over
blocks of the paired difference (the overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from talon_rt.talon.policies import BASELINE

HERE = Path(__file__).resolve().parent
OPTIONS = {"policy": BASELINE, "threads": 1}
PROMPT_IDS = [1, 5, 9, 42, 17, 33, 8, 100]
TEXT = "def fib(n):"
WARMUP = 3


def build_host(lib_dir: Path, out_dir: Path, cc: str) -> Path:
    """Compile examples/overhead.c against lib_dir/libtalon_rt.so; returns the executable."""
    exe = out_dir / "overhead"
    subprocess.run([cc, "-std=c99", "-O2", f"-I{HERE}", str(HERE / "examples" / "overhead.c"),
                    f"-L{lib_dir}", "-ltalon_rt", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)], check=True)
    return exe


def c_medians(exe: Path, engine: str, calls: int) -> dict[str, float]:
    """{name: median seconds} from the C host's "c <name> median_us=..." lines."""
    out = subprocess.run([str(exe), engine, json.dumps(OPTIONS), ",".join(map(str, PROMPT_IDS)), TEXT,
                          str(calls)], check=True, capture_output=True, text=True).stdout
    medians = {}
    for line in out.splitlines():
        _, name, median, *_ = line.split()
        medians[name] = float(median.split("=")[1]) * 1e-6
    return medians


def _median_s(fn, calls: int) -> float:
    times = []
    for i in range(WARMUP + calls):
        t0 = time.perf_counter()
        fn()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(engine: str, calls: int, blocks: int, lib_dir: Path, cc: str) -> dict[str, dict[str, float]]:
    """{name: {"c_us", "python_us", "overhead_us"}}: medians over `blocks` alternating blocks."""
    from talon_rt.runtime.api import Generator
    if not (lib_dir / "libtalon_rt.so").is_file():
        raise SystemExit(f"{lib_dir / 'libtalon_rt.so'}: not found (run `make capi` first)")
    per_block = max(1, calls // blocks)
    c_blocks, py_blocks = [], []
    with tempfile.TemporaryDirectory() as tmp, Generator.open(engine, **OPTIONS) as gen:
        exe = build_host(lib_dir, Path(tmp), cc)
        py_calls = {"generate_1_token": lambda: gen.generate(PROMPT_IDS, max_new_tokens=1),
                    "encode": lambda: gen.encode(TEXT)}
        for _ in range(blocks):
            c_blocks.append(c_medians(exe, engine, per_block))
            py_blocks.append({name: _median_s(fn, per_block) for name, fn in py_calls.items()})
    med = statistics.median
    return {name: {"c_us": 1e6 * med(b[name] for b in c_blocks),
                   "python_us": 1e6 * med(b[name] for b in py_blocks),
                   "overhead_us": 1e6 * med(c[name] - p[name] for c, p in zip(c_blocks, py_blocks))}
            for name in py_calls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m talon_rt.runtime.capi.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine directory")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per side and measurement (default 300)")
    ap.add_argument("--blocks", type=int, default=5, help="alternating C / Python blocks (default 5)")
    ap.add_argument("--lib-dir", type=Path, default=HERE, help="directory holding libtalon_rt.so")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler found (set CC)")
    rows = measure(args.engine, args.calls, args.blocks, args.lib_dir.resolve(), cc)
    if args.json:
        print(json.dumps({"engine": args.engine, "calls": args.calls, "blocks": args.blocks, "options": OPTIONS,
                          "medians": rows}))
        return 0
    print(f"{'call':<18} {'C API (us)':>11} {'Python (us)':>12} {'overhead (us)':>14}   "
          f"{args.calls} calls a side in {args.blocks} blocks")
    for name, r in rows.items():
        print(f"{name:<18} {r['c_us']:>11.1f} {r['python_us']:>12.1f} {r['overhead_us']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
