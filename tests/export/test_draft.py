"""draft.onnx / draft_fc.onnx (ORT CPU, fp32) vs the reference EAGLE-3 head, draft vocab < target vocab.

Drives one EAGLE-3 round as the runtime does: a first call over committed rows, then two deeper calls
whose tree_mask covers scratch rows + new rows (T > q).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from talon_rt.export import checkpoints, onnx_graphs
from talon_rt.export.parity import GraphRunner, causal, ort_session
from talon_rt.export.reference import rope_inv_freq
from talon_rt.export.config import Rope

TOL = 1e-5
S, K_MAX = 64, 16

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tiny_pair):
    model_dir, draft_dir = tiny_pair
    target = checkpoints.load_target(model_dir)
    head = checkpoints.load_head(draft_dir, target)
    return target, head


def _check_topk(out, logits, head, q_rows=slice(None)):
    logp = logits.log_softmax(-1)
    v, i = logp.topk(K_MAX, -1)
    got_ids, got_logp = out["topk_ids"][0], out["topk_logp"][0]
    assert np.abs(got_logp - v[0].numpy()).max() < TOL
    assert (got_ids == head.draft_to_target(i[0]).numpy()).all()
    assert np.all(np.diff(got_logp, axis=-1) <= 0)  # descending


def test_head_config_and_vocab_maps(pair):
    target, head = pair
    c = head.config
    assert c.draft_vocab_size < target.config.vocab_size
    assert c.rope.theta == 10000.0  # no rope_theta in the head's config.json: base 10000
    assert head.d2t.abs().sum() > 0  # a non-trivial draft -> target map
    mapped = torch.arange(c.draft_vocab_size) + head.d2t
    assert head.t2d[mapped].all() and head.t2d.sum() == c.draft_vocab_size


def test_draft_fc(pair):
    _, head = pair
    sess = ort_session(onnx_graphs.build_draft_fc(head, "float32"))
    f = torch.randn(1, 5, 3 * head.config.hidden_size)
    (h,) = sess.run(None, {"features": f.numpy()})
    with torch.no_grad():
        assert np.abs(h - head.fuse(f).numpy()).max() < TOL


@pytest.mark.parametrize("flavour", ["standard", "gqa"])
def test_draft_round_matches_reference(pair, flavour):
    target, head = pair
    H, V = head.config.hidden_size, target.config.vocab_size
    run = GraphRunner.draft(ort_session(onnx_graphs.build_draft(head, "float32", S, K_MAX, flavour)))
    assert run.in_place == (flavour == "gqa")
    gen = torch.Generator().manual_seed(3)
    P = 10
    ids = torch.randint(0, V, (1, P), generator=gen)
    hid = torch.randn(1, P, H, generator=gen)

    # 1. first call: committed rows at positions 0..P-1
    out = run.run({"input_ids": ids.numpy(), "hidden": hid.numpy()}, np.arange(P), causal(P))
    with torch.no_grad():
        r0 = head(ids, hid)
    _check_topk(out, r0.logits, head)
    assert np.abs(out["hidden_out"] - r0.hidden_out.numpy()).max() < TOL
    key = run.kv[0][0][:, :, :P] if run.in_place else out["present_key"]   # gqa: written in place
    assert np.abs(key - r0.key.numpy()).max() < TOL
    cache = (r0.key, r0.value)

    # 2. depth 1: three children of the root at position P, fed the last row's hidden_out
    c1 = torch.from_numpy(out["topk_ids"][0, -1, :3])[None]
    h1 = torch.from_numpy(out["hidden_out"][:, -1:]).expand(1, 3, H).contiguous()
    m1 = np.eye(3, dtype=bool)
    out1 = run.run({"input_ids": c1.numpy(), "hidden": h1.numpy()}, [P] * 3, m1)  # scratch rows P..P+2
    full1 = torch.cat([torch.ones(1, 3, P, dtype=torch.bool), torch.from_numpy(m1)[None]], 2)
    with torch.no_grad():
        r1 = head(c1, h1, torch.full((1, 3), P), full1, cache)
    _check_topk(out1, r1.logits, head)
    assert np.abs(out1["hidden_out"] - r1.hidden_out.numpy()).max() < TOL
    cache = (torch.cat([cache[0], r1.key], 2), torch.cat([cache[1], r1.value], 2))

    # 3. depth 2: four nodes, parents = scratch rows 0, 0, 2, 1; tree_mask covers 3 scratch + 4 new (T=7)
    parents = [0, 0, 2, 1]
    c2 = torch.from_numpy(np.stack([out1["topk_ids"][0, p, j] for j, p in enumerate(parents)]))[None]
    h2 = torch.from_numpy(np.stack([out1["hidden_out"][0, p] for p in parents]))[None]
    m2 = np.zeros((4, 7), dtype=bool)
    for j, p in enumerate(parents):
        m2[j, p] = m2[j, 3 + j] = True
    out2 = run.run({"input_ids": c2.numpy(), "hidden": h2.numpy()}, [P + 1] * 4, m2, commit=False)
    full2 = torch.cat([torch.ones(1, 4, P, dtype=torch.bool), torch.from_numpy(m2)[None]], 2)
    with torch.no_grad():
        r2 = head(c2, h2, torch.full((1, 4), P + 1), full2, cache)
    _check_topk(out2, r2.logits, head)
    assert np.abs(out2["hidden_out"] - r2.hidden_out.numpy()).max() < TOL
    value = run.kv[0][1][:, :, P + 3:P + 7] if run.in_place else out2["present_value"]
    assert np.abs(value - r2.value.numpy()).max() < TOL


def test_head_rope_theta_is_honoured(tmp_path):
    from talon_rt.export.tiny import make_tiny_pair
    model_dir, draft_dir = make_tiny_pair(tmp_path, seed=2, layers=4, head_rope_theta=500000.0)
    head = checkpoints.load_head(draft_dir, checkpoints.load_target(model_dir))
    assert head.config.rope.theta == 500000.0
    assert torch.equal(head.inv_freq, rope_inv_freq(Rope(theta=500000.0), head.config.head_dim))
