"""Per-call overhead of the C API against calling the Python runtime directly.

    make capi && .venv/bin/python -m runtime.capi.overhead --engine engines/demo --calls 300

Times the same calls both ways, one after the other on an otherwise idle machine: a one-token
generation (`policy=ar`, so the call is one prefill and the crossing cost is visible) and a tokenizer
call (`encode`, almost nothing but the crossing). The C side is examples/overhead.c linked against
libtalon_rt.so; the Python side is runtime.api.Generator in this process. Reports medians.
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

HERE = Path(__file__).resolve().parent
OPTIONS = {"policy": "ar"}
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


def python_medians(engine: str, calls: int) -> dict[str, float]:
    from runtime.api import Generator
    gen = Generator.open(engine, **OPTIONS)
    try:
        return {"generate_1_token": _median_s(lambda: gen.generate(PROMPT_IDS, max_new_tokens=1), calls),
                "encode": _median_s(lambda: gen.encode(TEXT), calls)}
    finally:
        gen.close()


def measure(engine: str, calls: int, lib_dir: Path, cc: str) -> dict[str, dict[str, float]]:
    """{name: {"c_us", "python_us", "overhead_us"}} (medians)."""
    if not (lib_dir / "libtalon_rt.so").is_file():
        raise SystemExit(f"{lib_dir / 'libtalon_rt.so'}: not found (run `make capi` first)")
    with tempfile.TemporaryDirectory() as tmp:
        c = c_medians(build_host(lib_dir, Path(tmp), cc), engine, calls)
    py = python_medians(engine, calls)
    return {name: {"c_us": 1e6 * c[name], "python_us": 1e6 * py[name],
                   "overhead_us": 1e6 * (c[name] - py[name])} for name in py}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.capi.overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine directory")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per measurement (default 300)")
    ap.add_argument("--lib-dir", type=Path, default=HERE, help="directory holding libtalon_rt.so")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler found (set CC)")
    rows = measure(args.engine, args.calls, args.lib_dir.resolve(), cc)
    if args.json:
        print(json.dumps({"engine": args.engine, "calls": args.calls, "options": OPTIONS, "medians": rows}))
        return 0
    print(f"{'call':<18} {'C API (us)':>11} {'Python (us)':>12} {'overhead (us)':>14}   median of {args.calls}")
    for name, r in rows.items():
        print(f"{name:<18} {r['c_us']:>11.1f} {r['python_us']:>12.1f} {r['overhead_us']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
