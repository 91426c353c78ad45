"""The loopback load test of `talon-rt serve` (docs/serving.md):

    python -m talon_rt.runtime.serve.loadtest --engine engines/demo --instances 2 --clients 16 --requests 4

Starts `talon-rt serve` on 127.0.0.1 (a free port), computes each prompt's reference with `talon-rt run
--json` (greedy, same settings), then runs `clients` threads of the official openai client, each streaming
`requests` completions one after the other. Checks: every response complete, equal token for token to
its reference (and its streamed text to the reference text), no errors, the server's RSS flat after the
warm-up. Reports p50/p99 time to first token and per-token latency. Bounded in count and in time
(`--timeout`): it stops by itself and always stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talon_rt.runtime.serve import API_KEY_ENV
from talon_rt.runtime.serve.pool import threads_per_instance

HOST = "127.0.0.1"                 # loopback only
RSS_GROWTH_LIMIT = 0.10            # "flat": the RSS after the run within 10 % of the RSS after the warm-up


@dataclass(frozen=True)
class Sample:
    client: int
    prompt: int
    ttft_s: float                  # request sent -> first streamed text
    per_token_s: float             # (last chunk - first chunk) / (tokens - 1)
    tokens: list[int]
    text: str
    finish_reason: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def reference(engine: str, prompt: str, max_tokens: int, threads: int) -> dict[str, Any]:
    """`talon-rt run` on the same prompt, greedy: {"tokens", "text", ...}."""
    out = subprocess.run([sys.executable, "-m", "talon_rt.runtime.cli", "run", "--engine", engine, "--prompt", prompt,
                          "--max-new-tokens", str(max_tokens), "--temperature", "0", "--threads", str(threads),
                          "--json"],
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


def stream_one(client: Any, model: str, prompt: str, max_tokens: int, who: int, which: int) -> Sample:
    t0 = time.perf_counter()
    first = last = None
    parts: list[str] = []
    tokens: list[int] = []
    finish = None
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, extra_body={"x_talon": {"return_tokens": True}})
    for chunk in stream:
        now = time.perf_counter()
        choice = chunk.choices[0]
        if choice.text:
            first = now if first is None else first
            last = now
            parts.append(choice.text)
        if choice.finish_reason is not None:
            finish = choice.finish_reason
            tokens = (chunk.model_extra or {}).get("x_talon", {}).get("tokens", [])
    if first is None or last is None:
        raise RuntimeError(f"client {who}: no text streamed for prompt {which}")
    per_token = (last - first) / max(len(tokens) - 1, 1)
    return Sample(who, which, first - t0, per_token, tokens, "".join(parts), finish)


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "talon_rt.runtime.cli", "serve", "--engine", args.engine, "--host", HOST,
           "--port", str(port), "--instances", str(args.instances), "--max-queue", str(args.clients),
           "--threads", str(threads_per_instance(args.instances))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(url: str, proc: subprocess.Popen, deadline: float) -> None:
    import httpx
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"talon-rt serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("talon-rt serve did not become healthy in time")


def percentiles(xs: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(xs, 50)), "p99": float(np.percentile(xs, 99)), "max": float(max(xs))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from openai import OpenAI

    from talon_rt.runtime.bench.datasets import load_prompts

    deadline = time.monotonic() + args.timeout
    prompts = [p.text for p in load_prompts(args.dataset, limit=args.prompts)]
    refs = [reference(args.engine, p, args.max_tokens, threads_per_instance(args.instances)) for p in prompts]
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_server(args, port)
    samples: list[Sample] = []
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    done = threading.Event()
    try:
        wait_healthy(url, proc, deadline)

        def monitor() -> None:
            while not done.wait(0.25):
                rss.append((time.monotonic(), rss_bytes(proc.pid)))

        def client(who: int) -> None:
            oai = OpenAI(base_url=url + "/v1", api_key=os.environ.get(API_KEY_ENV, "unused"), max_retries=0,
                         timeout=max(1.0, deadline - time.monotonic()))
            for j in range(args.requests):
                which = (who * args.requests + j) % len(prompts)
                try:
                    samples.append(stream_one(oai, args.model, prompts[which], args.max_tokens, who, which))
                except Exception as e:
                    errors.append(f"client {who} request {j}: {type(e).__name__}: {e}")

        threading.Thread(target=monitor, daemon=True).start()
        t0 = time.perf_counter()
        clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(max(0.0, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        if any(c.is_alive() for c in clients):
            errors.append(f"timed out after {args.timeout} s with {sum(c.is_alive() for c in clients)} clients running")
    finally:
        done.set()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return report(args, refs, samples, errors, rss, wall)


def report(args: argparse.Namespace, refs: list[dict[str, Any]], samples: list[Sample], errors: list[str],
           rss: list[tuple[float, int]], wall: float) -> dict[str, Any]:
    mismatched = [f"client {s.client} prompt {s.prompt}" for s in samples
                  if s.tokens != refs[s.prompt]["tokens"] or s.text != refs[s.prompt]["text"]]
    expected = args.clients * args.requests
    warm = rss[len(rss) // 4][1] if rss else 0         # after the first quarter of the run: sessions warm
    end = rss[-1][1] if rss else 0
    out = {
        "settings": {k: getattr(args, k) for k in ("engine", "instances", "clients", "requests", "max_tokens",
                                                    "dataset", "prompts")},
        "requests": expected, "completed": len(samples), "errors": errors, "mismatched": mismatched,
        "unfinished": [f"client {s.client} prompt {s.prompt}" for s in samples if s.finish_reason is None],
        "wall_s": wall, "tokens": sum(len(s.tokens) for s in samples),
        "tokens_per_s": sum(len(s.tokens) for s in samples) / wall if wall > 0 else 0.0,
        "ttft_s": percentiles([s.ttft_s for s in samples]) if samples else None,
        "per_token_s": percentiles([s.per_token_s for s in samples]) if samples else None,
        "rss_mb": {"warm": warm / 2**20, "end": end / 2**20, "max": max((r for _, r in rss), default=0) / 2**20,
                   "samples": len(rss)},
    }
    out["rss_flat"] = bool(rss) and end <= warm * (1 + RSS_GROWTH_LIMIT)
    out["ok"] = (not errors and not mismatched and not out["unfinished"] and len(samples) == expected
                 and out["rss_flat"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m talon_rt.runtime.serve.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=4, help="streaming requests per client, one after the other")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dataset", default="humaneval", help="prompt source (talon_rt.runtime.bench.datasets)")
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts, spread over the requests")
    p.add_argument("--model", default=None, help="the served model id (default: the engine's name)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run, then it stops")
    p.add_argument("--out", type=Path, help="write the JSON report here too")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = json.loads((Path(args.engine) / "manifest.json").read_text())["name"]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
