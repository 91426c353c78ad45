"""What a frozen target gives the head's training: its EAGLE-3 features, its distribution over the draft
vocabulary (soft labels) and its greedy token, at every position of a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from talon_rt.export.config import TargetConfig

AUTOCAST = dict(device_type="cpu", dtype=torch.bfloat16)


def autocast_for(x) -> dict:
    """bf16 autocast arguments for the device of tensor or module `x` (cpu or cuda)."""
    device = x.device if isinstance(x, Tensor) else next(x.parameters()).device
    return dict(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class TargetPass:
    features: Tensor   # [B, T, 3H] taps low -> mid -> high
    soft: Tensor       # [B, T, Vd] target distribution restricted to the draft vocab
    greedy: Tensor     # [B, T] target argmax (target ids)


@torch.no_grad()
def target_pass(target, ids: Tensor, draft_ids: Tensor, taps) -> TargetPass:
    """One forward of a transformers causal LM `target` over ids [B, T]; `taps` the hidden-state indices
    of the features, `draft_ids` [Vd] the target ids of the draft vocabulary."""
    with torch.autocast(**AUTOCAST):
        out = target(input_ids=ids, output_hidden_states=True)
    logits = out.logits.float()
    features = torch.cat([out.hidden_states[i].float() for i in taps], dim=-1)
    return TargetPass(features, logits[..., draft_ids].softmax(-1), logits.argmax(-1))


def taps(target) -> tuple[int, int, int]:
    """EAGLE-3 taps of a transformers causal LM: hidden_states[2, L//2, L-3]."""
    return TargetConfig.default_feature_layers(target.config.num_hidden_layers)
