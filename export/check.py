"""Check a freshly written engine directory against the reference modules it was exported from.

One prefill of a short prompt, one 6-node tree call over the cache, and one draft round (first call
over the prompt with fc(features), one deeper call), run through ONNX Runtime CPU and through the
PyTorch reference. fp32 engines must agree to a tolerance scaled by the logit magnitude; fp16 engines
and quantised weights are judged by top-1 agreement (their numbers are reported either way).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from talon_rt.export.errors import ExportError
from talon_rt.export.parity import GraphRunner, ancestors_mask, causal, ort_session
from talon_rt.export.reference import Eagle3Head, Target

PROMPT = 12
TREE = [-1, 0, 0, 1, 1, 2]
FP32_REL_TOL = 1e-4  # max |diff| / max(1, max |logit|); tiny models reach ~1e-6
FP16_MIN_TOP1 = 0.8  # share of rows whose argmax / top-1 child agrees with fp32 reference
QUANTIZED_MIN_TOP1 = 0.8  # the same for int8 / int4 target or draft weights against the float reference


def check_engine(engine_dir: str | Path, target: Target, head: Eagle3Head | None) -> dict:
    """Returns {"target_max_abs_diff", "target_top1"} and, with a head, {"draft_max_abs_diff",
    "draft_top1"}; raises on failure. head None: a target-only engine (the target graph alone)."""
    engine_dir = Path(engine_dir)
    m = json.loads((engine_dir / "manifest.json").read_text())
    V, f16 = m["model"]["vocab_size"], m["model"]["dtype"] == "float16"
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, V, (1, PROMPT)))
    depth = [0] * len(TREE)
    for i, p in enumerate(TREE):
        depth[i] = 0 if p < 0 else depth[p] + 1
    mask = ancestors_mask(TREE)

    t = GraphRunner.target(ort_session(engine_dir / m["graphs"]["target"]["file"], threads=2))
    pre = t.run({"input_ids": ids.numpy()}, np.arange(PROMPT), causal(PROMPT))
    tree_ids = pre["logits"][0, -1].argsort()[::-1][: len(TREE)].copy()[None].astype(np.int64)
    tree = t.run({"input_ids": tree_ids}, [PROMPT + d for d in depth], mask, commit=False)
    with torch.no_grad():
        r_pre = target(ids)
        full = torch.cat([torch.ones(1, len(TREE), PROMPT, dtype=torch.bool), torch.from_numpy(mask)[None]], 2)
        r_tree = target(torch.from_numpy(tree_ids), torch.tensor([[PROMPT + d for d in depth]]), full,
                        cache=r_pre.new_kv)
    got_t = np.concatenate([pre["logits"][0], tree["logits"][0]])
    ref_t = torch.cat([r_pre.logits[0], r_tree.logits[0]]).numpy()

    report = {
        "target_max_abs_diff": float(np.abs(got_t - ref_t).max()),
        "target_top1": float((got_t.argmax(-1) == ref_t.argmax(-1)).mean()),
    }
    if head is not None:
        report.update(_check_draft(engine_dir, m, head, ids, pre["features"]))
    draft_scale = max(1.0, report.pop("draft_logp_scale", 0.0))
    if f16:
        for key in ("target_top1", "draft_top1") if head is not None else ("target_top1",):
            if report[key] < FP16_MIN_TOP1:
                raise ExportError(f"check: {key} = {report[key]:.2f} < {FP16_MIN_TOP1} (fp16 engine vs fp32 reference)")
    else:
        scale = max(1.0, float(np.abs(ref_t).max()))
        if m["model"].get("weights", "float") != "float":
            if report["target_top1"] < QUANTIZED_MIN_TOP1:
                raise ExportError(f"check: target_top1 = {report['target_top1']:.2f} < {QUANTIZED_MIN_TOP1} "
                                  f"({m['model']['weights']} target weights vs the reference on their dequantised blocks)")
        elif report["target_max_abs_diff"] > FP32_REL_TOL * scale:
            raise ExportError(f"check: target.onnx logits differ from the reference by "
                              f"{report['target_max_abs_diff']:.2e} (> {FP32_REL_TOL} x {scale:.1f})")
        if head is not None and m["draft"].get("weights", "float") != "float":
            # quantised draft weights: only proposals change (the target verifies every token)
            if report["draft_top1"] < QUANTIZED_MIN_TOP1:
                raise ExportError(f"check: draft_top1 = {report['draft_top1']:.2f} < {QUANTIZED_MIN_TOP1} "
                                  f"({m['draft']['weights']} draft weights vs the float reference)")
        elif head is not None and report["draft_max_abs_diff"] > FP32_REL_TOL * draft_scale:
            raise ExportError(f"check: draft.onnx log-probs differ from the reference by "
                              f"{report['draft_max_abs_diff']:.2e}")
    return report


def _check_draft(engine_dir: Path, m: dict, head: Eagle3Head, ids: torch.Tensor, features: np.ndarray) -> dict:
    """The draft graphs (draft_fc, then a first call over the prompt and one deeper call) against the head."""
    fc = ort_session(engine_dir / m["graphs"]["draft_fc"]["file"], threads=2)
    (hidden,) = fc.run(None, {"features": features})
    d = GraphRunner.draft(ort_session(engine_dir / m["graphs"]["draft"]["file"], threads=2))
    first = d.run({"input_ids": ids.numpy(), "hidden": hidden}, np.arange(PROMPT), causal(PROMPT))
    kids = first["topk_ids"][:, -1:, :3].reshape(1, 3)
    deeper = d.run({"input_ids": kids, "hidden": np.repeat(first["hidden_out"][:, -1:], 3, 1)},
                   [PROMPT] * 3, np.eye(3, dtype=bool), commit=False)
    with torch.no_grad():
        h0 = head.fuse(torch.from_numpy(features).to(head.fc.weight.dtype))
        r0 = head(ids, h0)
        full = torch.cat([torch.ones(1, 3, PROMPT, dtype=torch.bool), torch.eye(3, dtype=torch.bool)[None]], 2)
        r1 = head(torch.from_numpy(kids), r0.hidden_out[:, -1:].expand(1, 3, -1), torch.full((1, 3), PROMPT),
                  full, (r0.key, r0.value))
    k = first["topk_logp"].shape[-1]
    ref_d = torch.cat([r0.logits[0], r1.logits[0]]).log_softmax(-1)
    ref_lp, ref_top = ref_d.topk(k, -1)
    got_lp = np.concatenate([first["topk_logp"][0], deeper["topk_logp"][0]])
    got_ids = np.concatenate([first["topk_ids"][0], deeper["topk_ids"][0]])

    return {"draft_max_abs_diff": float(np.abs(got_lp - ref_lp.numpy()).max()),
            "draft_top1": float((got_ids[:, 0] == head.draft_to_target(ref_top[:, 0]).numpy()).mean()),
            "draft_logp_scale": float(ref_lp.abs().max())}
