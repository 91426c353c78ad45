"""Held-out agreement of a head with the target's greedy token, per rollout step (the head feeding back
its own hidden states): on the cached bf16 features (the training curve) or on a fresh float32 target
pass (the figures of the head's README)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from talon_rt.train.eagle3 import Agreement
from talon_rt.train.target_pass import TargetPass, taps

from . import features
from .dataset import Split, data_folder


def evaluate(head, split: Split, rows_of: torch.Tensor, pad: int, steps: int, limit: int | None = None,
             batch: int = 4) -> dict:
    """Agreement over the first `limit` conversations of `split`, on its cached features."""
    acc = Agreement(steps)
    n = len(split.convs) if limit is None else min(limit, len(split.convs))
    for i in range(0, n, batch):
        ids, tp, mask = split.batch(list(range(i, min(n, i + batch))), rows_of, pad)
        acc.add(head, ids, tp, mask)
    return acc.result()


def draft_rows(head, lm) -> torch.Tensor:
    """The target's lm_head rows of the head's draft vocabulary [Vd, H], float32."""
    return lm.lm_head.weight[torch.arange(len(head.d2t), device=head.d2t.device) + head.d2t].float()


@torch.no_grad()
def target_pass_fp32(lm, ids: torch.Tensor, taps, rows: torch.Tensor) -> TargetPass:
    """The target's pass over `ids` [B, T] in float32 (features and greedy tokens as the fp32 engine
    gives them), soft labels over the draft rows `rows` (`draft_rows`)."""
    H = lm.config.hidden_size
    f, greedy = features.forward(lm, ids, taps, bf16=False)
    return TargetPass(f[..., :3 * H], (f[..., 3 * H:] @ rows.T).softmax(-1), greedy)


@torch.no_grad()
def evaluate_fp32(head, lm, split: Split, taps, pad: int, steps: int, limit: int | None = None,
                  batch: int = 4) -> dict:
    """Agreement over the first `limit` conversations of `split` (None: all), the target recomputed in
    float32 (only the tokens are cached)."""
    acc = Agreement(steps)
    rows = draft_rows(head, lm)
    n = len(split.convs) if limit is None else min(limit, len(split.convs))
    for i in range(0, n, batch):
        ids, _, mask = split.batch(list(range(i, min(n, i + batch))), rows, pad)
        acc.add(head, ids, target_pass_fp32(lm, ids, taps, rows), mask)
    return acc.result()


def run(head_folder: Path, model: Path, work: Path, steps: int, limit: int | None = None,
        out_json: Path | None = None, device: str = "cpu", loaded=None) -> dict:
    """Load `head_folder` the way the exporter does and score it on `<work>/data/heldout` in float32;
    `loaded`: the (target, tokenizer) `target.load` gave, else loaded here."""
    from talon_rt.export.checkpoints import load_head

    from . import target as target_mod

    lm, tok = loaded or target_mod.load(model, device=device)
    head = load_head(head_folder, target_mod.view(lm)).float().to(device).eval()
    split = Split(data_folder(work, "heldout"))
    result = evaluate_fp32(head, lm, split, taps(lm),
                           target_mod.stop_ids(lm, tok)[0], steps, limit)
    result["conversations"] = min(limit or len(split.convs), len(split.convs))
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1) + "\n")
    return result
