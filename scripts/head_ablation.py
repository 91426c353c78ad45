"""Ablation of the head recipe's training settings on one data set, at a fixed CPU-time budget each.

    python scripts/head_ablation.py --model M --work runs/head/work --minutes 8 [--only NAME ...]

Every variant trains a fresh head with `python -m talon_rt.train.recipes.head train` on the data of
`--work` (its `data/` folder, read only), in its own folder `<work>/ablation/<name>/`, for at most
`--minutes` of wall time, its cosine schedule sized from a throughput probe of the same settings
(a probe's first steps are slow, so runs tend to end early: the table gives the minutes each took).
Variants run two at a time, one thread each (both cores, equal conditions). The score is the step-1
(and chain) agreement on the valid split at the end (the curve's last row). The table goes to
`<work>/ablation/ablation.md` and `.json`; the head README quotes it. Run it on an otherwise idle
machine: the budget is wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# name -> (what it changes, recipe flags)
VARIANTS = {
    "baseline": ("7 rollout steps throughout, lr 5e-4, 4,096 tokens a step, bf16 soft labels", []),
    "early1": ("1 rollout step for the first 75 % of the steps, then 7", ["--early-steps", "1"]),
    "early2": ("2 rollout steps for the first 75 % of the steps, then 7", ["--early-steps", "2"]),
    "early1-hard": ("early1 + 0.5 x hard (argmax) cross-entropy, soft labels from a float32 product",
                    ["--early-steps", "1", "--hard-weight", "0.5", "--soft-fp32"]),
    "early1-lr1e-3": ("early1 at lr 1e-3", ["--early-steps", "1", "--lr", "1e-3"]),
    "early1-small": ("early1 with 2,048 tokens a step (twice the steps)", ["--early-steps", "1",
                                                                          "--batch-tokens", "2048"]),
}
EARLY_FRACTION = 0.75   # the recipe's default with --early-steps


def prepare(work: Path, folder: Path) -> None:
    """A fresh work folder for one run sharing `work`'s data (and draft vocabulary, when chosen)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.symlink((work / "data").resolve(), folder / "data")
    shutil.copy(work / "model.json", folder / "model.json")
    vocab = work / "head" / "draft_ids.npy"
    if vocab.is_file():
        (folder / "head").mkdir()
        shutil.copy(vocab, folder / "head" / "draft_ids.npy")


def start(model: Path, folder: Path, flags: list[str], tokens: int, minutes: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "talon_rt.train.recipes.head", "train", "--model", str(model),
           "--out", str(folder / "out"), "--work", str(folder), "--train-tokens", str(tokens),
           "--minutes", f"{minutes:g}", "--threads", "1", *flags]
    log = open(folder / "train.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def in_pairs(jobs: list, run) -> list:
    """run(job) -> Popen, two at a time (one thread each: both cores, equal conditions)."""
    results = []
    for i in range(0, len(jobs), 2):
        procs = [run(j) for j in jobs[i:i + 2]]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a training run failed ({p.args}); see its train.log")
        results += jobs[i:i + 2]
    return results


def state(folder: Path) -> dict:
    return json.loads((folder / "head" / "result.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the target (the data's model)")
    ap.add_argument("--work", type=Path, required=True, help="a head recipe work folder whose data step is done")
    ap.add_argument("--minutes", type=float, default=8.0, help="training wall time per variant")
    ap.add_argument("--probe-minutes", type=float, default=0.75, help="wall time of each throughput probe")
    ap.add_argument("--only", nargs="*", default=None, help=f"variants to run (of {', '.join(VARIANTS)})")
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} (variants: {', '.join(VARIANTS)})")
    root = args.work / "ablation"
    root.mkdir(parents=True, exist_ok=True)
    # throughput probes: the full rollout, and each variant's early rollout alone (fraction 1)
    probes = {"full": list(VARIANTS["baseline"][1])}
    for n in names:
        flags = VARIANTS[n][1]
        if "--early-steps" in flags:
            probes[n] = flags + ["--early-fraction", "1"]

    def run_probe(key):
        prepare(args.work, root / f"probe-{key}")
        return start(args.model, root / f"probe-{key}", probes[key], 10_000_000, args.probe_minutes)

    in_pairs(list(probes), run_probe)
    rate = {}
    for k in probes:
        st = state(root / f"probe-{k}")
        rate[k] = st["tokens"] / st["seconds"]
    budget = args.minutes * 60
    tokens = {}
    for n in names:
        if n in rate:   # early share at its own rate, the rest at the full rollout's
            per_token = EARLY_FRACTION / rate[n] + (1 - EARLY_FRACTION) / rate["full"]
        else:
            per_token = 1 / rate["full"]
        tokens[n] = int(0.95 * budget / per_token)

    def run_variant(n):
        prepare(args.work, root / n)
        return start(args.model, root / n, VARIANTS[n][1], tokens[n], args.minutes * 1.1)

    in_pairs(names, run_variant)
    results = {}
    for n in names:
        row = json.loads((root / n / "head" / "curve.jsonl").read_text().splitlines()[-1])
        st = state(root / n)
        results[n] = {"what": VARIANTS[n][0], "flags": " ".join(VARIANTS[n][1]),
                      "train_minutes": round(st["seconds"] / 60, 2), "tokens": st["tokens"],
                      "planned_tokens": tokens[n], "tokens_per_s": round(st["tokens"] / st["seconds"]),
                      "step1": row["per_step"][0], "per_step": row["per_step"],
                      "chain_mean": row["chain_mean_accepted"], "positions": row["positions"]}
    (root / "ablation.json").write_text(json.dumps({"minutes": args.minutes, "probe_rates": rate,
                                                    "variants": results}, indent=1) + "\n")
    lines = ["| variant | what | train min | tokens | tok/s | valid step 1 | step 2 | chain mean |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        lines.append(f"| {n} | {r['what']} | {r['train_minutes']:.1f} | {r['tokens']:,} | {r['tokens_per_s']:,} "
                     f"| {r['step1']:.3f} | {r['per_step'][1]:.3f} | {r['chain_mean']:.2f} |")
    (root / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
