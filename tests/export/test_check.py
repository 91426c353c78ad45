"""talon_rt.export.check: the post-export self-check passes on a good engine and catches a wrong one."""
from __future__ import annotations

import pytest
import torch

from talon_rt.export import checkpoints
from talon_rt.export.check import check_engine
from talon_rt.export.errors import ExportError

torch.set_num_threads(1)


def test_check_passes_and_catches_a_mismatch(tiny_pair, tiny_engine):
    target = checkpoints.load_target(tiny_pair[0])
    head = checkpoints.load_head(tiny_pair[1], target)
    report = check_engine(tiny_engine, target, head)
    assert report["target_max_abs_diff"] < 1e-4 and report["draft_top1"] == 1.0
    with torch.no_grad():
        target.model.layers[3].mlp.down_proj.weight.mul_(1.01)  # the engine no longer matches
    with pytest.raises(ExportError, match=r"target\.onnx logits differ from the reference"):
        check_engine(tiny_engine, target, head)
