"""The committed SmolLM2-135M-Instruct head (models/smollm2-eagle3): published EAGLE-3 layout, loadable
by the exporter with the target's embedding. Needs no target weights: the embedding is a stand-in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.train.test_stdlib_pair import PUBLISHED_KEYS  # noqa: E402

HEAD = Path(__file__).resolve().parents[2] / "models" / "smollm2-eagle3"
H, V, VD, FFN = 576, 49152, 8192, 1536  # SmolLM2-135M: hidden, vocab, the head's draft vocab, SwiGLU width


def test_tensor_names_shapes_and_dtypes():
    from safetensors import safe_open

    with safe_open(str(HEAD / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == PUBLISHED_KEYS  # no embed_tokens: the target's is used
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert f.get_tensor("fc.weight").dtype == torch.float16
        d2t, t2d = f.get_tensor("d2t"), f.get_tensor("t2d")
    assert shapes["fc.weight"] == (H, 3 * H)
    assert shapes["midlayer.self_attn.q_proj.weight"] == (H, 2 * H)
    assert shapes["midlayer.self_attn.k_proj.weight"] == (3 * 64, 2 * H)
    assert shapes["midlayer.mlp.gate_proj.weight"] == (FFN, H)
    assert shapes["lm_head.weight"] == (VD, H) and shapes["d2t"] == (VD,) and shapes["t2d"] == (V,)
    ids = torch.arange(VD) + d2t
    assert t2d.dtype == torch.bool and int(t2d.sum()) == VD and bool(t2d[ids].all())
    assert bool((ids[1:] > ids[:-1]).all()), "draft ids ascending, as EAGLE's d2t expects"


def test_loads_in_the_exporter_with_the_targets_embedding():
    from talon_rt.export.checkpoints import load_head
    from talon_rt.export.config import TargetConfig
    from talon_rt.train.recipes.head.target import TargetView

    cfg = json.loads((HEAD / "config.json").read_text())
    assert cfg["draft_vocab_size"] == VD and cfg["vocab_size"] == V and cfg["hidden_size"] == H
    tc = TargetConfig.from_hf({"model_type": "llama", "vocab_size": V, "hidden_size": H, "intermediate_size": FFN,
                               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3})
    embed = torch.nn.Embedding(V, H)
    model = torch.nn.Module()
    model.embed_tokens = embed
    head = load_head(HEAD, TargetView(tc, model, torch.nn.Linear(H, V, bias=False)))
    out = head(torch.tensor([[5, 6, 7]]), head.fuse(torch.randn(1, 3, 3 * H)))
    assert out.logits.shape == (1, 3, VD) and torch.isfinite(out.logits).all()


def test_readme_names_the_data_and_the_reproduce_command():
    text = (HEAD / "README.md").read_text()
    for needed in ("python -m talon_rt.train.recipes.head", "| stdlib |", "| word |", "| topic |", "Held-out agreement"):
        assert needed in text
