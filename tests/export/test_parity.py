"""ONNX graphs (ORT CPU, fp32) vs transformers and vs the reference modules, on tiny random models.

For each family (Llama, Llama-3.1 rope scaling, Qwen2 qkv bias, Qwen3 q/k norm, Qwen3 with tied
embeddings): prefill, one-token
decode with a cache, and a 13-node tree with repeated, non-contiguous positions; max |logit diff| < 1e-4,
and the three feature taps equal transformers' hidden_states[2], [L//2], [L-3].
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from talon_rt.export import checkpoints, onnx_graphs
from talon_rt.export.parity import GraphRunner, ancestors_mask, causal, ort_session
from talon_rt.export.tiny import make_tiny_pair

TOL = 1e-4
S = 64
PROMPT = 16
# 13 nodes, parents before children, listed depth-first: depths 0,1,2,3,1,2,2,3,1,2,2,3,4
PARENTS = [-1, 0, 1, 2, 0, 4, 1, 6, 0, 8, 8, 5, 3]

torch.set_num_threads(1)


def depths(parents):
    d = []
    for p in parents:
        d.append(0 if p < 0 else d[p] + 1)
    return d


@pytest.fixture(scope="module", params=["llama", "llama3.1", "qwen2", "qwen3", "qwen3-tied"])
def family(request, tmp_path_factory):
    import transformers
    arch, tied = request.param.removesuffix("-tied"), request.param.endswith("-tied")
    model_dir, draft_dir = make_tiny_pair(tmp_path_factory.mktemp(request.param), arch=arch, seed=1,
                                          tie_embeddings=tied)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    ref = checkpoints.load_target(model_dir)
    sess = ort_session(onnx_graphs.build_target(ref, "float32", S))
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, ref.config.vocab_size, (1, PROMPT), generator=gen)
    tree = torch.randint(3, ref.config.vocab_size, (1, len(PARENTS)), generator=gen)
    return request.param, hf, ref, sess, prompt, tree


def _hf(hf, ids):
    with torch.no_grad():
        return hf(ids, output_hidden_states=True)


def test_rope_and_bias_are_what_the_family_says(family):
    arch, hf, ref, *_ = family
    c = ref.config
    assert c.tie_word_embeddings == arch.endswith("-tied") == hf.config.tie_word_embeddings
    arch = arch.removesuffix("-tied")
    assert c.rope.type == ("llama3" if arch == "llama3.1" else "default")
    assert c.qkv_bias == (arch == "qwen2") and c.qk_norm == (arch == "qwen3")


def test_prefill_logits_and_features(family):
    _, hf, ref, sess, prompt, _ = family
    L = ref.config.num_layers
    run = GraphRunner.target(sess)
    out = run.run({"input_ids": prompt.numpy()}, np.arange(PROMPT), causal(PROMPT))
    expect = _hf(hf, prompt)
    assert np.abs(out["logits"] - expect.logits.numpy()).max() < TOL
    taps = torch.cat([expect.hidden_states[i] for i in (2, L // 2, L - 3)], -1).numpy()
    assert ref.config.feature_layers == (2, L // 2, L - 3)
    assert np.abs(out["features"] - taps).max() < TOL
    with torch.no_grad():
        r = ref(prompt)
    assert np.abs(out["logits"] - r.logits.numpy()).max() < TOL
    assert np.abs(out["features"] - r.features.numpy()).max() < TOL
    for i, (k, v) in enumerate(r.new_kv):
        assert np.abs(out[f"present_key_{i}"] - k.numpy()).max() < TOL
        assert np.abs(out[f"present_value_{i}"] - v.numpy()).max() < TOL


def test_decode_one_token_with_cache(family):
    _, hf, ref, sess, prompt, tree = family
    run = GraphRunner.target(sess)
    run.run({"input_ids": prompt.numpy()}, np.arange(PROMPT), causal(PROMPT))
    nxt = tree[:, :1]
    out = run.run({"input_ids": nxt.numpy()}, [PROMPT], causal(1))
    expect = _hf(hf, torch.cat([prompt, nxt], 1))
    assert np.abs(out["logits"][0, 0] - expect.logits[0, -1].numpy()).max() < TOL
    with torch.no_grad():
        r = ref(nxt, cache=ref(prompt).new_kv)
    assert np.abs(out["logits"] - r.logits.numpy()).max() < TOL


def test_tree_matches_each_root_to_node_path(family):
    """Tree logits of node i == transformers' last logits on prompt + (root .. node i)."""
    _, hf, ref, sess, prompt, tree = family
    n, dep = len(PARENTS), depths(PARENTS)
    positions = [PROMPT + d for d in dep]
    assert len(set(positions)) < n and positions != sorted(positions)  # repeated and non-contiguous
    mask = ancestors_mask(PARENTS)
    run = GraphRunner.target(sess)
    run.run({"input_ids": prompt.numpy()}, np.arange(PROMPT), causal(PROMPT))
    out = run.run({"input_ids": tree.numpy()}, positions, mask, commit=False)
    for i in range(n):
        path = [j for j in range(n) if mask[i, j]]  # ancestors are listed before descendants
        expect = _hf(hf, torch.cat([prompt, tree[:, path]], 1)).logits[0, -1].numpy()
        assert np.abs(out["logits"][0, i] - expect).max() < TOL, f"node {i}"
    full = torch.cat([torch.ones(1, n, PROMPT, dtype=torch.bool), torch.from_numpy(mask)[None]], 2)
    with torch.no_grad():
        r = ref(tree, torch.tensor([positions]), full, cache=ref(prompt).new_kv)
    assert np.abs(out["logits"] - r.logits.numpy()).max() < TOL
    assert np.abs(out["features"] - r.features.numpy()).max() < TOL


def test_greedy_decode_matches_generate(family):
    """20 greedy steps through target.onnx with its static KV buffers == transformers' generate."""
    _, hf, _, sess, prompt, _ = family
    run = GraphRunner.target(sess)
    out = run.run({"input_ids": prompt.numpy()}, np.arange(PROMPT), causal(PROMPT))
    tokens = [int(out["logits"][0, -1].argmax())]
    for step in range(19):
        out = run.run({"input_ids": np.array([[tokens[-1]]])}, [PROMPT + step], causal(1))
        tokens.append(int(out["logits"][0, -1].argmax()))
    with torch.no_grad():
        expect = hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, PROMPT:].tolist()
    assert tokens == expect


def test_gqa_flavour_matches_the_reference(family):
    """Flavour "gqa" (GroupQueryAttention, KV written in place): prefill, one-token decode and the
    13-node tree against the reference modules; the cache rows it wrote equal the reference K/V;
    `argmax` is the logits' argmax."""
    _, _, ref, _, prompt, tree = family
    run = GraphRunner.target(ort_session(onnx_graphs.build_target(ref, "float32", S, "gqa")))
    assert run.in_place
    with torch.no_grad():
        r_pre = ref(prompt)
    out = run.run({"input_ids": prompt.numpy()}, np.arange(PROMPT), causal(PROMPT))
    assert np.abs(out["logits"] - r_pre.logits.numpy()).max() < TOL
    assert np.abs(out["features"] - r_pre.features.numpy()).max() < TOL
    assert (out["argmax"] == out["logits"].argmax(-1)).all()
    for i, (k, v) in enumerate(r_pre.new_kv):
        assert np.abs(run.kv[i][0][:, :, :PROMPT] - k.numpy()).max() < TOL
        assert np.abs(run.kv[i][1][:, :, :PROMPT] - v.numpy()).max() < TOL

    n, positions = len(PARENTS), [PROMPT + d for d in depths(PARENTS)]
    mask = ancestors_mask(PARENTS)
    out = run.run({"input_ids": tree.numpy()}, positions, mask, commit=False)
    full = torch.cat([torch.ones(1, n, PROMPT, dtype=torch.bool), torch.from_numpy(mask)[None]], 2)
    with torch.no_grad():
        r = ref(tree, torch.tensor([positions]), full, cache=r_pre.new_kv)
    assert np.abs(out["logits"] - r.logits.numpy()).max() < TOL
    assert np.abs(out["features"] - r.features.numpy()).max() < TOL
    assert (out["argmax"] == out["logits"].argmax(-1)).all()
    for i, (k, _) in enumerate(r.new_kv):   # the tree's rows, in place at [P, P+n)
        assert np.abs(run.kv[i][0][:, :, PROMPT:PROMPT + n] - k.numpy()).max() < TOL

    nxt = tree[:, :1]   # the tree's rows are stale: a decode step overwrites row P
    out = run.run({"input_ids": nxt.numpy()}, [PROMPT], causal(1))
    with torch.no_grad():
        r = ref(nxt, cache=r_pre.new_kv)
    assert np.abs(out["logits"] - r.logits.numpy()).max() < TOL
