"""`python -m talon_rt.runtime.profile --engine DIR`: where one round's time goes, and what an engine call costs.

Round profile, per configuration (ar, and talon at a few budgets), medians over all rounds of a few
code prompts, in microseconds per round:
- engine: `draft_fc`, the first draft call (last round's accepted tokens; the root's children), the
  deeper draft calls (one per tree layer), the verify (target) call, the KV commit;
- host: the policy's build without its draft calls, verify prep (tree mask, positions), acceptance
  (talon/ greedy or sampling verification), the rest of the round (the commit's host side, the
  policy's learner).
Engine numbers time the backend methods, so they include binding and host-side copies.

Call costs: the target at q = 1, 2, 4, ..., 64 over a cache of --past rows (the verify-cost curve),
the draft at q = 1 and 10, draft_fc at q = 1; medians of --reps calls.

The round is `Decoder.round` itself (runtime/decode.py), timed by a tracer told when each step ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from talon_rt.runtime.backends import open_backend
from talon_rt.runtime.backends.base import Backend
from talon_rt.runtime.costs import medians_us
from talon_rt.runtime.decode import Decoder, Tracer
from talon_rt.runtime.manifest import Manifest, open_manifest
from talon_rt.runtime.options import resolve_options
from talon_rt.talon.policies import BASELINE, TALON, TALON_COST

PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\nimport sys\n\n\ndef main(argv):\n    parser = ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def read_lines(path):\n    with open(path) as f:\n        return [line.rstrip('\\n') for line in f]\n\n\n"
    "def count_words(path):\n",
)
ENGINE_KEYS = ("draft_fc", "draft_first", "draft_deeper", "verify_call", "commit")
HOST_KEYS = ("build_host", "verify_prep", "accept", "rest")


class TimedBackend(Backend):
    """Wraps a backend; accumulates ns and calls per kind of call until `take()`."""

    def __init__(self, inner: Backend):
        self.inner, self.name = inner, inner.name
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._after_fc = False

    def _time(self, key: str, fn, *args):
        t0 = time.perf_counter_ns()
        out = fn(*args)
        self.ns[key] += time.perf_counter_ns() - t0
        self.calls[key] += 1
        return out

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        ns, calls = dict(self.ns), dict(self.calls)
        self.ns.clear()
        self.calls.clear()
        return ns, calls

    def target(self, ids, positions, mask, past_len):
        return self._time("verify_call", self.inner.target, ids, positions, mask, past_len)

    def target_argmax(self, ids, positions, mask, past_len):
        return self._time("verify_call", self.inner.target_argmax, ids, positions, mask, past_len)

    def commit_target(self, past_len, rows):
        return self._time("commit", self.inner.commit_target, past_len, rows)

    def draft_fc(self, rows, kept=0):
        self._after_fc = True
        return self._time("draft_fc", self.inner.draft_fc, rows, kept)

    def keep_features(self, rows, at):
        return self._time("draft_fc", self.inner.keep_features, rows, at)

    def draft(self, ids, hidden, positions, mask, past_len):
        key = "draft_first" if self._after_fc else "draft_deeper"
        self._after_fc = False
        return self._time(key, self.inner.draft, ids, hidden, positions, mask, past_len)

    def close(self):
        self.inner.close()


class Laps(Tracer):
    """The time each step of a round ended (ns), by step name."""

    def __init__(self) -> None:
        self.at: dict[str, int] = {}

    def lap(self, step: str) -> None:
        self.at[step] = time.perf_counter_ns()


class ProfiledDecoder(Decoder):
    """`Decoder` whose rounds record the time of each step (`records`, one dict per round, ns)."""

    backend: TimedBackend

    def __init__(self, backend: TimedBackend, m: Manifest, o):
        super().__init__(backend, m, o)
        self.records: list[dict[str, Any]] = []
        self.laps = self.tracer = Laps()

    def round(self, root: int):
        self.backend.take()   # drop the prefill's calls and anything between rounds
        start = time.perf_counter_ns()
        result = super().round(root)
        end = time.perf_counter_ns()
        tree, acc = result[0], result[1]
        at = self.laps.at
        ns, calls = self.backend.take()
        draft_ns = ns.get("draft_fc", 0) + ns.get("draft_first", 0) + ns.get("draft_deeper", 0)
        rec = {k: ns.get(k, 0) for k in ENGINE_KEYS}
        rec["build_host"] = (at["build"] - start) - draft_ns
        rec["verify_prep"] = (at["verify"] - at["build"]) - ns.get("verify_call", 0)
        rec["accept"] = at["accept"] - at["verify"]
        rec["rest"] = (end - at["accept"]) - ns.get("commit", 0)
        rec["round"] = end - start
        rec["deeper_calls"] = calls.get("draft_deeper", 0)
        rec["tree_size"] = tree.size
        rec["emitted"] = len(acc.tokens)
        self.records.append(rec)
        return result


def _open(m: Manifest, **options) -> ProfiledDecoder:
    o = resolve_options(m, options)
    return ProfiledDecoder(TimedBackend(open_backend(m, o.backend, o.threads, o.thread_mode)), m, o)


def profile_rounds(m: Manifest, prompts: list[list[int]], new_tokens: int, **options) -> dict[str, Any]:
    """One configuration: every prompt once to warm up, then once measured. Medians in us per round."""
    dec = _open(m, **options)
    try:
        for p in prompts[:1]:
            dec.generate(p, new_tokens)
        dec.records.clear()
        t0 = time.perf_counter()
        generated = sum(len(dec.generate(p, new_tokens).tokens) for p in prompts)
        wall = time.perf_counter() - t0
    finally:
        dec.backend.close()
    recs = dec.records
    med = {k: float(np.median([r[k] for r in recs])) / 1e3 for k in ENGINE_KEYS + HOST_KEYS + ("round",)}
    deeper = [r["draft_deeper"] / r["deeper_calls"] for r in recs if r["deeper_calls"]]
    return {
        "rounds": len(recs), "tokens_per_s": generated / wall,
        "tau": float(np.mean([r["emitted"] for r in recs])),
        "tree_size": float(np.median([r["tree_size"] for r in recs])),
        "deeper_calls": float(np.median([r["deeper_calls"] for r in recs])),
        "deeper_call_us": float(np.median(deeper)) / 1e3 if deeper else 0.0,
        "median_us": med,
        "engine_us": sum(med[k] for k in ENGINE_KEYS), "host_us": sum(med[k] for k in HOST_KEYS),
    }


def _median_us(fn, reps: int, warmup: int = 5) -> float:
    """Median us of `reps` back-to-back calls of fn after `warmup` (the first calls after a change
    of shape run slow)."""
    return medians_us({0: fn}, reps, warmup=warmup, passes=1)[0]


def call_costs(m: Manifest, past: int, reps: int, qs: list[int], **options) -> dict[str, Any]:
    """Median us of single engine calls at past_len `past` (random ids; a chain-shaped tree mask)."""
    o = resolve_options(m, {**options, "policy": BASELINE})
    b = open_backend(m, o.backend, o.threads, o.thread_mode)
    rng = np.random.default_rng(0)
    V, H = m.model.vocab_size, m.draft.hidden_size
    try:
        warm = min(past, m.limits.max_prefill_chunk)
        b.target(rng.integers(0, V, warm), np.arange(warm), np.tril(np.ones((warm, warm), bool)), 0)
        out: dict[str, Any] = {"past": past, "target_argmax": {}, "target_logits": {}, "draft": {}}
        for q in [q for q in qs if q <= m.limits.max_tree_tokens and past + q <= m.limits.max_seq_len]:
            ids, pos, mask = rng.integers(0, V, q), past + np.arange(q), np.tril(np.ones((q, q), bool))
            out["target_argmax"][q] = _median_us(lambda: b.target_argmax(ids, pos, mask, past), reps)
            out["target_logits"][q] = _median_us(lambda: b.target(ids, pos, mask, past), reps)
        out["draft_fc"] = _median_us(lambda: b.draft_fc(np.zeros(1, np.int64)), reps)
        for q in (1, 10):
            ids, pos, mask = rng.integers(0, V, q), np.full(q, past), np.eye(q, dtype=bool)
            hid = np.zeros((q, H), m.kv_dtype)
            out["draft"][q] = _median_us(lambda: b.draft(ids, hid, pos, mask, past), reps)
        return out
    finally:
        b.close()


def _print_rounds(label: str, r: dict[str, Any]) -> None:
    med = r["median_us"]
    cells = "  ".join(f"{k} {med[k]:7.0f}" for k in ENGINE_KEYS + HOST_KEYS)
    print(f"{label:<12} round {med['round']:7.0f} us = engine {r['engine_us']:6.0f} + host {r['host_us']:5.0f} "
          f"({r['host_us'] / max(med['round'], 1e-9):.0%}) | {cells} | deeper calls {r['deeper_calls']:.0f} x "
          f"{r['deeper_call_us']:.0f} us, tree {r['tree_size']:.0f}, tau {r['tau']:.2f}, "
          f"{r['tokens_per_s']:.0f} tok/s")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m talon_rt.runtime.profile", description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, help="engine directory")
    p.add_argument("--budgets", default="4,8,16,32", help="talon budgets to profile (default %(default)s)")
    p.add_argument("--cost-budgets", default="32",
                   help="talon-cost budget caps to profile ('' for none; default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per prompt (default %(default)s)")
    p.add_argument("--past", type=int, default=256, help="cache rows behind each timed call (default %(default)s)")
    p.add_argument("--reps", type=int, default=50, help="calls per call-cost median (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    p.add_argument("--backend", default=None, help="auto | ort-cpu | ort-cuda | tensorrt")
    p.add_argument("--skip-calls", action="store_true", help="round profile only")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    m = open_manifest(args.engine)
    common = {"threads": args.threads, "backend": args.backend}
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(m.path(m.tokenizer.file)))
    V = m.model.vocab_size
    prompts = [[i for i in tok.encode(p).ids if i < V] or [0] for p in PROMPTS]
    result: dict[str, Any] = {"engine": str(m.dir), "flavour": m.graphs["target"].flavour, "rounds": {}}
    print(f"engine {m.dir} (flavour {result['flavour']}, {m.model.num_layers}x{m.model.hidden_size}, "
          f"vocab {V}); round medians in us")
    configs = [(BASELINE, {"policy": BASELINE})]
    configs += [(f"{TALON} N={n}", {"policy": TALON, "budget": int(n)})
                for n in args.budgets.split(",") if int(n) <= m.limits.max_tree_tokens]
    configs += [(f"{TALON_COST} N={n}", {"policy": TALON_COST, "budget": int(n)})
                for n in filter(None, args.cost_budgets.split(",")) if int(n) <= m.limits.max_tree_tokens]
    for label, opts in configs:
        r = profile_rounds(m, prompts, args.new_tokens, temperature=0.0, **opts, **common)
        result["rounds"][label] = r
        _print_rounds(label, r)
    if not args.skip_calls:
        c = call_costs(m, args.past, args.reps, [1, 2, 4, 8, 16, 32, 64], **common)
        result["calls"] = c
        print(f"calls at past_len {c['past']}, median us of {args.reps}:")
        print("  target (argmax) " + "  ".join(f"q={q}: {v:.0f}" for q, v in c["target_argmax"].items()))
        print("  target (logits) " + "  ".join(f"q={q}: {v:.0f}" for q, v in c["target_logits"].items()))
        print(f"  draft q=1: {c['draft'][1]:.0f}  q=10: {c['draft'][10]:.0f}  draft_fc q=1: {c['draft_fc']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
