"""Peers on the same model, same prompt ids, same machine: llama.cpp (llama-cpp-python on the GGUF:
greedy, prompt lookup), onnxruntime-genai (its builder's fp32 and int4 exports of the dequantized
weights: greedy, n-gram lookup, draft-model speculation with a standalone draft LM) and transformers
on CPU (greedy `generate`, assisted generation with the draft LM, prompt lookup).

Each peer configuration runs in its own process (`python -m talon_rt.runtime.bench.peers.worker`) with its
family's own virtualenv (envs.py, built once under the cache), so its libraries (torch,
transformers, onnxruntime_genai, llama_cpp) never load into the runtime nor meet each other, and its
threads never share a process with ours. A configuration that cannot run is a row with its reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from talon_rt.runtime.bench.peers.unavailable import PeerUnavailable


@dataclass(frozen=True)
class PeerSpec:
    family: str   # "llamacpp" | "ortgenai" | "hf"
    mode: str     # llamacpp: greedy | prompt_lookup;  ortgenai: greedy | draft | draft-nospin | ngram;
                  # hf: greedy | assisted | prompt_lookup
    label: str
    needs_draft: bool = False
    precision: str = "fp32"     # ortgenai's builder precision; "gguf": the GGUF's own quantization
    same_weights: bool = True   # computes with the fp32 weights of an fp32 engine: must emit its ar tokens

    @property
    def needs(self) -> tuple[str, ...]:
        """The job inputs this configuration cannot run without."""
        source = ("gguf",) if self.family == "llamacpp" else ("hf_model",)
        return source + (("draft_lm",) if self.needs_draft else ())


PEERS = (
    PeerSpec("llamacpp", "greedy", "llama.cpp greedy (GGUF)", precision="gguf", same_weights=False),
    PeerSpec("llamacpp", "prompt_lookup", "llama.cpp prompt lookup (GGUF, n=2, 10 tokens)", precision="gguf",
             same_weights=False),
    PeerSpec("ortgenai", "greedy", "onnxruntime-genai fp32 greedy"),
    PeerSpec("ortgenai", "draft", "onnxruntime-genai fp32 draft-model (K=4)", needs_draft=True),
    PeerSpec("ortgenai", "draft-nospin", "onnxruntime-genai fp32 draft-model (K=4, no spinning)", needs_draft=True),
    PeerSpec("ortgenai", "ngram", "onnxruntime-genai fp32 n-gram (n=3, K=8, chained)"),
    PeerSpec("ortgenai", "greedy", "onnxruntime-genai int4 greedy", precision="int4", same_weights=False),
    PeerSpec("ortgenai", "ngram", "onnxruntime-genai int4 n-gram (n=3, K=8, chained)", precision="int4",
             same_weights=False),
    PeerSpec("hf", "greedy", "transformers greedy generate"),
    PeerSpec("hf", "assisted", "transformers assisted generation (draft LM)", needs_draft=True),
    PeerSpec("hf", "prompt_lookup", "transformers prompt lookup (10 tokens)"),
)
# why a configuration's input is missing, by job key
MISSING = {"hf_model": "no --hf-model given (the target in HF format; python -m talon_rt.export.hf_folder makes one from a GGUF)",
           "draft_lm": "no --draft-lm given (a standalone draft LM)",
           "gguf": "no --gguf given (the GGUF the engine was exported from)"}


@dataclass(frozen=True)
class PeerPrompt:
    dataset: str
    id: str
    ids: list[int]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "talon-rt" / "peers"


def _row(spec: PeerSpec, dataset: str) -> dict[str, Any]:
    return {"dataset": dataset, "peer": spec.label, "family": spec.family, "mode": spec.mode,
            "precision": spec.precision, "same_weights": spec.same_weights}


def _unavailable(spec: PeerSpec, datasets: Sequence[str], reason: str) -> list[dict[str, Any]]:
    return [{**_row(spec, d), "tokens_per_s": None, "tau": None, "prompts": 0, "status": reason} for d in datasets]


def worker_env(family: str, threads: int) -> dict[str, str]:
    """The environment of a family's worker process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.pop("OMP_WAIT_POLICY", None)
    if family != "llamacpp":
        # torch's OpenMP pool sleeps instead of spinning: with any other load on 2 cores, a spinning
        # pool made transformers' greedy generate 20x slower here (7 vs 155 tok/s). Not llama.cpp's
        # (its OpenMP build): sleeping threads there cost 3x on a quiet machine (38 vs 107 tok/s greedy)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run_worker(spec: PeerSpec, job: dict[str, Any], timeout_s: float, python: str | None = None) -> dict[str, Any]:
    """Run one peer configuration in a fresh process; returns the worker's JSON answer."""
    with tempfile.TemporaryDirectory(prefix="talon-peer-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps({**job, "family": spec.family, "mode": spec.mode, "precision": spec.precision}))
        env = worker_env(spec.family, job["threads"])
        try:
            proc = subprocess.run([python or sys.executable, "-m", "talon_rt.runtime.bench.peers.worker",
                                   str(job_path), str(out_path)], capture_output=True, text=True,
                                  timeout=timeout_s, env=env, cwd=Path(__file__).resolve().parents[3])
        except subprocess.TimeoutExpired:
            return {"status": f"failed: timed out after {timeout_s:.0f} s"}
        if out_path.is_file():
            return json.loads(out_path.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed: worker exited with {proc.returncode}: {tail[0][:200]}"}


def peer_rows(spec: PeerSpec, answer: dict[str, Any], datasets: Sequence[str]) -> list[dict[str, Any]]:
    from talon_rt.runtime.bench.metrics import spread   # here: the workers import this package, not the metrics
    if answer.get("status") != "ok":
        return _unavailable(spec, datasets, answer.get("status", "failed: no status"))
    rows = []
    for d in datasets:
        runs = [r for r in answer["runs"] if r["dataset"] == d]
        tps = [r["new_tokens"] / r["wall_s"] for r in runs if r["wall_s"] > 0]
        calls = [r.get("target_calls") for r in runs]
        tau = (sum(r["new_tokens"] for r in runs) / sum(calls)) if runs and all(calls) else None
        p10, p90 = spread(tps)
        rows.append({**_row(spec, d), "tokens_per_s": statistics.median(tps) if tps else None, "tau": tau,
                     "tokens_per_s_p10": p10, "tokens_per_s_p90": p90,
                     "prompts": len(runs), "new_tokens": sum(r["new_tokens"] for r in runs),
                     "status": "ok", "detail": answer.get("detail", {}), "runs": runs})
    return rows


def run_peers(prompts: Sequence[PeerPrompt], *, hf_model: str | None, draft_lm: str | None,
              max_new_tokens: int, threads: int, gguf: str | None = None, stop_ids: Sequence[int] = (),
              warmup: int = 1, cache_dir: Path | None = None, timeout_s: float = 1800.0,
              specs: Sequence[PeerSpec] = PEERS, own_envs: bool = True, progress: Any = None) -> list[dict[str, Any]]:
    """Every peer configuration over the same prompt ids; one row per (dataset, configuration).
    With `own_envs`, each family runs in its own virtualenv under the cache (built on first use);
    without, in this Python (which then needs every family's libraries)."""
    from talon_rt.runtime.bench.peers.envs import ensure_env
    datasets = list(dict.fromkeys(p.dataset for p in prompts))
    cache = Path(cache_dir or default_cache_dir())
    inputs = {k: str(Path(v).resolve()) if v else None
              for k, v in (("hf_model", hf_model), ("draft_lm", draft_lm), ("gguf", gguf))}
    job = {**inputs, "cache_dir": str(cache), "threads": threads, "stop_ids": [int(t) for t in stop_ids],
           "max_new_tokens": max_new_tokens, "warmup": warmup,
           "prompts": [{"dataset": p.dataset, "id": p.id, "ids": list(p.ids)} for p in prompts]}
    rows = []
    for spec in specs:
        if progress:
            progress(spec.label)
        missing = [k for k in spec.needs if not inputs[k]]
        if missing:
            rows += _unavailable(spec, datasets, f"unavailable: {MISSING[missing[0]]}")
            continue
        try:
            python = str(ensure_env(spec.family, cache)) if own_envs else None
        except PeerUnavailable as e:
            rows += _unavailable(spec, datasets, f"unavailable: its virtualenv could not be built: {e}")
            continue
        rows += peer_rows(spec, run_worker(spec, job, timeout_s, python=python), datasets)
    return rows
