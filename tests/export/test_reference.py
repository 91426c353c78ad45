"""The reference EAGLE-3 head's training-time-test attention equals step-by-step inference."""
from __future__ import annotations

import torch

from talon_rt.export.config import HeadConfig
from talon_rt.export.reference import Eagle3Head

torch.set_num_threads(1)


def _head(norm_before_residual=False):
    torch.manual_seed(0)
    c = HeadConfig(hidden_size=32, intermediate_size=48, num_heads=4, num_kv_heads=2, head_dim=8,
                   vocab_size=50, draft_vocab_size=20, norm_before_residual=norm_before_residual)
    h = Eagle3Head(c, with_embedding=True).eval()
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0, 0.3)
    return h


def test_ttt_steps_equal_cached_inference():
    """Step j at position t sees step-0 keys <= t and steps 1..j at t: a cache of exactly those rows."""
    head = _head()
    T = 6
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, 50, (1, T), generator=g) for _ in range(3)]
    with torch.no_grad():
        outs = [head(ids[0], torch.randn(1, T, 32, generator=g))]
        kvs = [(outs[0].key, outs[0].value)]
        for j in (1, 2):
            outs.append(head(ids[j], outs[-1].hidden_out, ttt_kv=kvs))
            kvs.append((outs[-1].key, outs[-1].value))
        for j in (1, 2):
            for t in range(T):
                k = torch.cat([kvs[0][0][:, :, : t + 1]] + [kvs[i][0][:, :, t : t + 1] for i in range(1, j)], 2)
                v = torch.cat([kvs[0][1][:, :, : t + 1]] + [kvs[i][1][:, :, t : t + 1] for i in range(1, j)], 2)
                o = head(ids[j][:, t : t + 1], outs[j - 1].hidden_out[:, t : t + 1], torch.tensor([[t]]),
                         torch.ones(1, 1, k.shape[2] + 1, dtype=torch.bool), (k, v))
                assert (o.hidden_out[0, 0] - outs[j].hidden_out[0, t]).abs().max() < 1e-5, (j, t)
                assert (o.logits[0, 0] - outs[j].logits[0, t]).abs().max() < 1e-4, (j, t)


def test_full_sequence_call_is_causal():
    head = _head(norm_before_residual=True)
    ids, h = torch.randint(0, 50, (1, 8)), torch.randn(1, 8, 32)
    with torch.no_grad():
        full = head(ids, h)
        part = head(ids[:, :5], h[:, :5])
    assert (full.hidden_out[:, :5] - part.hidden_out).abs().max() < 1e-5
    assert full.logits.shape == (1, 8, 20)
