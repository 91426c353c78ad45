"""Greedy and sampled tokens of every policy on a set of engines, as JSON: a refactor that must not change
behaviour is checked by running this before and after and comparing the files (`--compare A B`).
talon-cost and talon-gated decide by measured time, so their sampled (T > 0) runs differ from run to run.

    python scripts/policy_tokens.py --engine engines/demo --tiny --out before.json
    python scripts/policy_tokens.py --compare before.json after.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

try:
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.options import POLICIES
except ImportError:   # the layout before the talon_rt namespace
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.options import POLICIES

PROMPTS = ([1, 5, 9, 14, 2, 7], [3, 3, 8, 1, 40, 41, 42, 5, 9])
TEXT_PROMPTS = ("Write a short poem about the sea.", "List three uses of a paperclip.")


def tiny_engines(work: Path, draft_weights: str | None) -> list[Path]:
    try:
        from talon_rt.export.build import ExportOptions, export_engine
        from talon_rt.export.tiny import make_tiny_pair
    except ImportError:
        from talon_rt.export.build import ExportOptions, export_engine
        from talon_rt.export.tiny import make_tiny_pair
    model_dir, draft_dir = make_tiny_pair(work / "pair", arch="llama", seed=0)
    out = []
    for flavour in ("standard", "gqa", "ort"):
        opts = ExportOptions(dtype="float32", max_seq_len=256, max_tree_tokens=64, max_prefill_chunk=128,
                             k_max=32, flavour=flavour, draft_weights=draft_weights)
        out.append(Path(export_engine(model_dir, draft_dir, work / f"tiny-{flavour}", opts, name=f"tiny-{flavour}")))
    return out


def run(engines: list[Path], new_tokens: int) -> dict:
    result: dict = {}
    for engine in engines:
        for policy in POLICIES:
            for temperature in (0.0, 0.7):
                g = Generator.open(engine, policy=policy, temperature=temperature, seed=7, threads=1)
                tiny = g.manifest.model.vocab_size < 1000
                outs = []
                for p in (PROMPTS if tiny else TEXT_PROMPTS):
                    r = g.generate(list(p), new_tokens) if tiny else g.generate_text(p, new_tokens)
                    outs.append([int(t) for t in r.tokens])
                key = f"{engine.name}/{policy}/T={temperature}"
                result[key] = outs
                print(key, [len(o) for o in outs], file=sys.stderr)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", action="append", default=[], help="an engine directory (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="also the tiny random pair in all three flavours")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--draft-weights", default=None,
                    help="the tiny engines' draft weights (default: the exporter's for their flavour)")
    ap.add_argument("--out", help="JSON file to write")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two files written by --out")
    a = ap.parse_args()
    if a.compare:
        x, y = (json.loads(Path(f).read_text()) for f in a.compare)
        keys = sorted(set(x) | set(y))
        differ = [k for k in keys if x.get(k) != y.get(k)]
        print(f"{len(keys) - len(differ)}/{len(keys)} (engine, policy, temperature) runs identical")
        for k in differ:
            print("  differs:", k)
        return 1 if differ else 0
    with tempfile.TemporaryDirectory() as tmp:
        engines = [Path(e) for e in a.engine] + (tiny_engines(Path(tmp), a.draft_weights) if a.tiny else [])
        result = run(engines, a.new_tokens)
    Path(a.out).write_text(json.dumps(result, indent=0))
    print(f"{len(result)} runs -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
