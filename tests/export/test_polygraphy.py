"""`polygraphy run --onnxrt` on the exported graphs, compared with saved reference-module outputs.

The reference outputs (PyTorch reference modules, fp32) and the inputs are saved in polygraphy's own
JSON formats; polygraphy then runs the graph with ONNX Runtime and compares every output. This is the
same check a TensorRT plan gets on a GPU (`--trt` instead of `--onnxrt`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from talon_rt.export import checkpoints
from talon_rt.export.parity import ancestors_mask

torch.set_num_threads(1)
P, PARENTS = 12, [-1, 0, 0, 1, 2, 1, 3, 5]


def _polygraphy() -> list[str]:
    exe = Path(sys.executable).with_name("polygraphy")
    if exe.exists():
        return [str(exe)]
    if shutil.which("polygraphy"):
        return ["polygraphy"]
    pytest.skip("polygraphy is not installed")


def _save(tmp_path, name, feed, outputs):
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    inputs, ref = tmp_path / f"{name}_inputs.json", tmp_path / f"{name}_ref.json"
    save_json([feed], str(inputs))
    results = RunResults()
    results.append(("reference", [IterationResult(outputs=outputs, runner_name="reference")]))
    results.save(str(ref))
    return inputs, ref


def _run(graph, inputs, ref, tol):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(_polygraphy() + ["run", str(graph), "--onnxrt", "--load-inputs", str(inputs),
                                        "--load-outputs", str(ref), "--atol", str(tol), "--rtol", "0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASSED" in r.stdout + r.stderr


def test_target_tree_call_vs_reference(tiny_pair, tiny_engine, tmp_path):
    target = checkpoints.load_target(tiny_pair[0])
    c, S = target.config, 256
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, c.vocab_size, (1, P), generator=g)
    tree = torch.randint(0, c.vocab_size, (1, len(PARENTS)), generator=g)
    mask = ancestors_mask(PARENTS)
    depth = [0] * len(PARENTS)
    for i, p in enumerate(PARENTS):
        depth[i] = 0 if p < 0 else depth[p] + 1
    pos = torch.tensor([[P + d for d in depth]])
    with torch.no_grad():
        cache = target(prompt).new_kv
        full = torch.cat([torch.ones(1, len(PARENTS), P, dtype=torch.bool), torch.from_numpy(mask)[None]], 2)
        r = target(tree, pos, full, cache=cache)
    feed = {"input_ids": tree.numpy(), "position_ids": pos.numpy(), "tree_mask": mask[None],
            "past_len": np.array([P], dtype=np.int64)}
    outputs = {"logits": r.logits.numpy(), "features": r.features.numpy()}
    for i, ((k, v), (nk, nv)) in enumerate(zip(cache, r.new_kv)):
        for kind, old, new in (("key", k, nk), ("value", v, nv)):
            buf = np.zeros((1, c.num_kv_heads, S, c.head_dim), np.float32)
            buf[:, :, :P] = old.numpy()
            feed[f"past_{kind}_{i}"] = buf
            outputs[f"present_{kind}_{i}"] = new.numpy()
    inputs, ref = _save(tmp_path, "target", feed, outputs)
    _run(tiny_engine / "target.onnx", inputs, ref, 1e-4)


def test_draft_fc_vs_reference(tiny_pair, tiny_engine, tmp_path):
    target = checkpoints.load_target(tiny_pair[0])
    head = checkpoints.load_head(tiny_pair[1], target)
    f = torch.randn(1, 6, 3 * head.config.hidden_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        h = head.fuse(f)
    inputs, ref = _save(tmp_path, "fc", {"features": f.numpy()}, {"hidden": h.numpy()})
    _run(tiny_engine / "draft_fc.onnx", inputs, ref, 1e-5)
