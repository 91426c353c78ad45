"""`python scripts/gpu_kit.py check --out DIR`: the ORT CUDA path on one GPU, in one command of at most
8 minutes, after `gpu_kit.py unpack` and `. .gpu-kit/env.sh`.

Steps, each recorded with its status (ok | failed, with the traceback | not run: why) and wall time:
1. environment: Python, onnxruntime (which file, which providers), CUDA devices, the nvidia lib folders;
2. export the stdlib pair (models/stdlib-pair) fp16, flavour standard;
3. `pytest -m gpu` on the test files that hold gpu tests (junit XML and the log beside the results);
4. tokens: ORT CUDA against ORT CPU for ar, chain, eagle3 and talon, greedy and sampled (seeded);
5. the verify-cost curve: target calls at q = 1..64 over a cache of --past rows (talon_rt.runtime.profile);
6. tok/s and the host share of a round: ar, and eagle3 and talon at --budgets (talon_rt.runtime.profile).

Writes DIR/results.json and DIR/summary.md. `--dry-run` runs the steps on a machine without CUDA:
ORT CPU stands in for ORT CUDA in steps 4-6 (the records say so), and what needs the CUDA provider
(step 3, the session-provider check) says "not run: no CUDA provider". Exit 0 when no step failed
(and, without --dry-run, none was left unrun).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
MODEL, HEAD = ROOT / "models/stdlib-pair/target", ROOT / "models/stdlib-pair/eagle3"
POLICIES = ("ar", "chain", "eagle3", "talon")
SAMPLING = {"temperature": 1.0, "seed": 7}
NO_CUDA = "not run: no CUDA provider"
# what onnxruntime-gpu 1.31.1's CUDA provider links (readelf NEEDED) or opens (cuDNN, cuFFT) at run time
CUDA_LIBS = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcufft.so.12",
             "libcudnn.so.9")
MAX_FILE = 15 * (1 << 20)   # each file under $OUT comes back only under 16 MiB


class NotRun(Exception):
    """A step that cannot run here; its message is the reason."""


class Check:
    def __init__(self, out: Path, deadline_s: float, after_step: Callable[[], None] = lambda: None):
        self.out, self.t0, self.deadline_s = out, time.perf_counter(), deadline_s
        self.steps: dict[str, dict[str, Any]] = {}
        self.after_step = after_step   # writes the results so far: a call killed at its limit keeps them

    def left(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.t0)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"gpu-kit check: {name} ...", flush=True)
        t0 = time.perf_counter()
        rec: dict[str, Any] = {}
        try:
            if self.left() <= 0:
                raise NotRun(f"not run: past the {self.deadline_s:.0f} s limit")
            rec["result"] = fn()
            rec["status"] = "ok"
        except NotRun as e:
            rec["status"] = str(e)
        except Exception as e:
            rec["status"] = f"failed: {type(e).__name__}: {e.args[0] if e.args else e}".splitlines()[0]
            rec["traceback"] = traceback.format_exc()
            if len(e.args) == 2 and isinstance(e.args[1], dict):
                rec["partial"] = e.args[1]   # the configurations that ran, and each failure's traceback
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        self.steps[name] = rec
        print(f"gpu-kit check: {name}: {rec['status']} ({rec['seconds']} s)", flush=True)
        self.after_step()
        return rec.get("result")


def guarded(fn: Callable[[], dict]) -> dict:
    """One configuration of a step: its result, or its error with the traceback (the others still run)."""
    try:
        return fn()
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()}


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    from talon_rt.runtime.backends import cuda_rt
    import ctypes

    def loads(name: str) -> str:
        try:
            ctypes.CDLL(name)
            return "ok"
        except OSError as e:
            return str(e)

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if _which("nvidia-smi") else None
    return {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__,
            "providers": ort.get_available_providers(), "cuda_devices": cuda_rt.device_count(),
            "nvidia_smi": smi.stdout.strip() if smi else None, "cuda_libs": {n: loads(n) for n in CUDA_LIBS},
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}


def _which(cmd: str) -> bool:
    from shutil import which
    return which(cmd) is not None


def run(cmd: list[str], timeout: float, log: Path | None = None) -> dict[str, Any]:
    """A subprocess with a time limit; its exit status and the tail of its output (all of it to log)."""
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"{' '.join(cmd[:4])} ...: timed out after {timeout:.0f} s") from e
    text = r.stdout + r.stderr
    if log is not None:
        log.write_text(text[-MAX_FILE:])
    tail = "\n".join(text.strip().splitlines()[-25:])
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd[:4])} ...\n{tail}")
    return {"exit": r.returncode, "tail": tail}


def gpu_test_files() -> list[str]:
    """The test files holding gpu-marked tests: collecting only these keeps the other files' imports
    (the server's and the benchmark's packages, absent from a GPU image) out of the run."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in f.read_text())


def export(work: Path, timeout: float) -> Path:
    engine = work / "stdlib-fp16"
    run([sys.executable, "-m", "export", "--model", str(MODEL), "--draft", str(HEAD), "--out", str(engine),
         "--dtype", "float16", "--flavour", "standard", "--force"], timeout)
    return engine


def prompts(engine: Path, n: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    from talon_rt.runtime.manifest import open_manifest
    from talon_rt.runtime.profile import PROMPTS
    m = open_manifest(engine)
    tok = Tokenizer.from_file(str(m.path(m.tokenizer.file)))
    V = m.model.vocab_size
    return [[i for i in tok.encode(p).ids if i < V] or [0] for p in PROMPTS[:n]]


def generate(engine: Path, backend: str, policy: str, ps: list[list[int]], new_tokens: int, **opts) -> dict:
    from talon_rt.runtime.api import Generator
    with Generator.open(engine, backend=backend, policy=policy, **opts) as gen:
        providers = sorted({g.session.get_providers()[0] for g in _sessions(gen)})
        runs = [gen.generate(p, max_new_tokens=new_tokens) for p in ps]
    return {"providers": providers, "tokens": [r.tokens for r in runs]}


def _sessions(gen) -> list:
    b = gen._decoder.backend
    return [g for g in (getattr(b, "_target", None), getattr(b, "_fc", None), getattr(b, "_draft", None)) if g]


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def compare_tokens(engine: Path, device: str, ps: list[list[int]], new_tokens: int, chk: Check) -> dict:
    """Per policy and mode: device tokens against ORT CPU tokens, prompt by prompt."""
    out: dict[str, Any] = {"device_backend": device, "prompts": len(ps), "new_tokens": new_tokens}
    for mode, opts in (("greedy", {"temperature": 0.0}), ("sampled", SAMPLING)):
        for policy in POLICIES:
            key = f"{policy} {mode}"
            if chk.left() <= 0:
                out[key] = {"status": "not run: past the time limit"}
                continue
            out[key] = guarded(lambda: _compare(engine, device, policy, ps, new_tokens, opts))
    bad = [k for k, v in out.items() if isinstance(v, dict) and v.get("status", "").startswith("failed")]
    if bad:
        raise RuntimeError(f"{', '.join(bad)} failed (tracebacks in results.json, steps.tokens.partial)",
                           out)
    return out


def _compare(engine: Path, device: str, policy: str, ps: list[list[int]], new_tokens: int, opts: dict) -> dict:
    cpu = generate(engine, "ort-cpu", policy, ps, new_tokens, **opts)
    dev = generate(engine, device, policy, ps, new_tokens, **opts)
    if device == "ort-cuda" and dev["providers"] != ["CUDAExecutionProvider"]:
        raise RuntimeError(f"{policy}: ort-cuda sessions ran on {dev['providers']}")
    diffs = [first_difference(a, b) for a, b in zip(dev["tokens"], cpu["tokens"])]
    return {"equal": sum(d is None for d in diffs), "of": len(ps), "first_difference": diffs,
            "device_providers": dev["providers"], "cpu_tokens": cpu["tokens"], "device_tokens": dev["tokens"]}


def curve(engine: Path, backend: str, past: int, reps: int, qs: list[int]) -> dict:
    from talon_rt.runtime.manifest import open_manifest
    from talon_rt.runtime.profile import call_costs
    return call_costs(open_manifest(engine), past, reps, qs, backend=backend)


def speeds(engine: Path, backend: str, ps: list[list[int]], new_tokens: int, budgets: list[int], chk: Check) -> dict:
    """tok/s, tau and the host share of a round (medians over rounds; talon_rt.runtime.profile.profile_rounds)."""
    from talon_rt.runtime.manifest import open_manifest
    m = open_manifest(engine)
    configs = [("ar", {"policy": "ar"})] + [(f"{p} N={n}", {"policy": p, "budget": n})
                                            for p in ("eagle3", "talon") for n in budgets]
    out: dict[str, Any] = {"backend": backend}
    for label, opts in configs:
        if chk.left() <= 0:
            out[label] = {"status": "not run: past the time limit"}
            continue
        out[label] = guarded(lambda: _speed(m, ps, new_tokens, backend, opts))
    bad = [k for k, v in out.items() if isinstance(v, dict) and v.get("status", "").startswith("failed")]
    if bad:
        raise RuntimeError(f"{', '.join(bad)} failed (tracebacks in results.json, steps.speed.partial)", out)
    return out


def _speed(m, ps: list[list[int]], new_tokens: int, backend: str, opts: dict) -> dict:
    from talon_rt.runtime.profile import profile_rounds
    r = profile_rounds(m, ps, new_tokens, temperature=0.0, backend=backend, **opts)
    r["host_share"] = r["host_us"] / max(r["median_us"]["round"], 1e-9)
    return r


def summary(env: dict | None, chk: Check, args: argparse.Namespace, device: str | None) -> str:
    lines = ["# GPU check (scripts/gpu_kit.py check)", ""]
    if args.dry_run:
        lines += ["**Dry run**: ORT CPU stands in for ORT CUDA in the tokens, curve and speed steps.", ""]
    if env:
        lines += [f"- python {env['python']}, onnxruntime {env['onnxruntime']} ({env['onnxruntime_file']})",
                  f"- providers {env['providers']}, CUDA devices {env['cuda_devices']}, GPU: {env['nvidia_smi']}",
                  "- CUDA libraries: " + ", ".join(f"{n} {'loads' if v == 'ok' else 'MISSING'}"
                                                   for n, v in env["cuda_libs"].items()),
                  f"- measured backend: {device or 'none'}", ""]
    lines += ["| step | status | s |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in chk.steps.items()]
    result = lambda name: chk.steps.get(name, {}).get("result") or chk.steps.get(name, {}).get("partial")  # noqa: E731
    toks = result("tokens")
    if toks:
        lines += ["", f"## Tokens: {toks.get('device_backend')} against ort-cpu (prompts equal, of "
                      f"{toks.get('prompts')} prompts, {toks.get('new_tokens')} new tokens each)", "",
                  "| policy | greedy | sampled |", "|---|---|---|"]
        cell = lambda r: f"{r['equal']}/{r['of']}" if "equal" in r else r.get("status", "not run")   # noqa: E731
        lines += [f"| {p} | {cell(toks.get(p + ' greedy', {}))} | {cell(toks.get(p + ' sampled', {}))} |"
                  for p in POLICIES]
    c = chk.steps.get("verify-cost curve", {}).get("result")
    if c:
        lines += ["", f"## Verify-cost curve (target call, us, median of {args.reps}, past {c['past']})", "",
                  "| q | argmax | logits |", "|---|---|---|"]
        lines += [f"| {q} | {c['target_argmax'][q]:.0f} | {c['target_logits'][q]:.0f} |" for q in c["target_argmax"]]
        lines += ["", f"draft q=1 {c['draft'][1]:.0f} us, q=10 {c['draft'][10]:.0f} us; draft_fc {c['draft_fc']:.0f} us"]
    s = result("speed")
    if s:
        lines += ["", f"## Speed ({s['backend']}, greedy)", "",
                  "| config | tok/s | tau | tree | round us | host us | host share |", "|---|---|---|---|---|---|---|"]
        for label, r in s.items():
            if not isinstance(r, dict):
                continue
            if "tokens_per_s" not in r:
                lines.append(f"| {label} | {r['status']} | | | | | |")
                continue
            lines.append(f"| {label} | {r['tokens_per_s']:.0f} | {r['tau']:.2f} | {r['tree_size']:.0f} | "
                         f"{r['median_us']['round']:.0f} | {r['host_us']:.0f} | {r['host_share']:.1%} |")
    errors = [(k, v["traceback"]) for k, v in chk.steps.items() if "traceback" in v]
    errors += [(f"{k}: {c}", r["traceback"]) for k, v in chk.steps.items() for c, r in (v.get("partial") or {}).items()
               if isinstance(r, dict) and "traceback" in r]
    if errors:
        lines += ["", "## Errors", ""]
        for k, tb in errors:
            lines += [f"### {k}", "", "```", tb.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def write_results(chk: Check, args: argparse.Namespace, env: dict | None, device: str | None) -> None:
    """results.json (every step, tracebacks included) and summary.md under args.out, each under 16 MiB."""
    wall = time.perf_counter() - chk.t0
    results = {"dry_run": args.dry_run, "device_backend": device, "wall_s": round(wall, 1), "args": {
        k: str(v) for k, v in vars(args).items()}, "steps": chk.steps}
    text = json.dumps(results, indent=1, default=str)
    if len(text) > MAX_FILE:   # only token lists grow with the run: keep their comparison, drop the ids
        for rec in (chk.steps.get("tokens", {}).get("result") or {}).values():
            if isinstance(rec, dict):
                rec.pop("cpu_tokens", None), rec.pop("device_tokens", None)
        text = json.dumps(results, indent=1, default=str)
    (args.out / "results.json").write_text(text + "\n")
    (args.out / "summary.md").write_text(summary(env, chk, args, device))


def ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu_kit.py check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results folder (on the device: $OUT)")
    p.add_argument("--work", type=Path, default=ROOT / ".gpu-kit" / "work", help="the exported engine")
    p.add_argument("--dry-run", action="store_true", help="no CUDA here: ORT CPU stands in (see above)")
    p.add_argument("--deadline", type=float, default=450, help="start no step after this many s (default %(default)s)")
    p.add_argument("--prompts", type=int, default=4, help="code prompts per run (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per prompt (default %(default)s)")
    p.add_argument("--budgets", default="8,16,32,60", help="eagle3/talon budgets (default %(default)s)")
    p.add_argument("--qs", default="1-64", help="verify-cost curve q values (default %(default)s)")
    p.add_argument("--past", type=int, default=256, help="cache rows behind each timed call (default %(default)s)")
    p.add_argument("--reps", type=int, default=30, help="calls per curve point (default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"env": None, "device": None}
    chk = Check(args.out, args.deadline, lambda: write_results(chk, args, state["env"], state["device"]))
    env = state["env"] = chk.step("environment", environment)
    cuda = bool(env) and "CUDAExecutionProvider" in env["providers"] and env["cuda_devices"] > 0
    device = state["device"] = "ort-cuda" if cuda else ("ort-cpu" if args.dry_run else None)
    engine = chk.step("export fp16 standard", lambda: export(args.work, min(240, chk.left())))
    ps: list[list[int]] | None = None

    def gpu_tests():
        files = gpu_test_files()
        if not cuda:
            run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "--collect-only", "-p", "no:cacheprovider",
                 *files], 120)
            raise NotRun(f"{NO_CUDA} (the gpu tests of {', '.join(files)} collect)")
        return run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rA",
                    f"--junitxml={args.out / 'pytest_gpu.xml'}", *files], min(240, chk.left()),
                   log=args.out / "pytest_gpu.log")

    def need() -> tuple[Path, str]:
        if engine is None or (ps is None and "prompts" in chk.steps):
            raise NotRun("not run: no engine or no prompts (see the steps before)")
        if device is None:
            raise NotRun(NO_CUDA)
        return engine, device

    chk.step("pytest -m gpu", gpu_tests)
    ps = chk.step("prompts", lambda: prompts(need()[0], args.prompts))
    chk.step("tokens", lambda: compare_tokens(*need(), ps, args.new_tokens, chk))
    chk.step("verify-cost curve", lambda: curve(*need(), args.past, args.reps, ints(args.qs)))
    chk.step("speed", lambda: speeds(*need(), ps, args.new_tokens, ints(args.budgets), chk))
    print((args.out / "summary.md").read_text(), flush=True)
    failed = [k for k, v in chk.steps.items() if v["status"].startswith("failed")]
    unrun = [k for k, v in chk.steps.items() if v["status"].startswith("not run")]
    return 1 if failed or (unrun and not args.dry_run) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
