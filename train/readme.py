"""Pieces of the model READMEs the recipes write from their recorded results (never typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6 if folder.exists() else 0.0


def agreement_lines(a: dict) -> list[str]:
    """The per-step agreement table of `head.Agreement.result()` and the chain's mean accepted length."""
    return [
        "| step | " + " | ".join(str(k + 1) for k in range(len(a["per_step"]))) + " |",
        "|---|" + "---|" * len(a["per_step"]),
        "| agreement | " + " | ".join(f"{x:.3f}" for x in a["per_step"]) + " |",
        "| chain (steps 1..k all agree) | " + " | ".join(f"{x:.3f}" for x in a["chain"]) + " |",
        "",
        f"Mean accepted length of a depth-{len(a['chain'])} chain: {a['chain_mean_accepted']:.2f} tokens (+1 bonus "
        f"token per target call). {a['coverage']:.1%} of the target's greedy tokens lie in the draft vocabulary.",
    ]


def notes_lines(work: Path) -> list[str]:
    """`work/notes.md`: facts of a particular run (interruptions, resizes), kept beside its results."""
    notes = work / "notes.md"
    return ["## Notes on this run", "", notes.read_text().strip(), ""] if notes.is_file() else []
