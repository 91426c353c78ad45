"""Slow, obviously-correct PyTorch reference modules: a Llama-family target and an EAGLE-3 head.

Every ONNX graph is checked against these, and these against `transformers`. Parameter names match
the checkpoints (HF `model.layers.{i}...` for the target, the published EAGLE-3 names for the head), so
`load_state_dict` of a real checkpoint works.

Conventions (batch B, q new tokens, P cached tokens):
- `position_ids [B, q]` are explicit (tree depth + P for a draft tree; never derived from P here).
- `mask [B, q, P+q]` bool over (cached + new) keys, True = may attend. None = causal
  (query i sees every cached key and new keys 0..i).
- A KV cache is a list of `(k, v)` pairs, one per layer, each `[B, kvh, P, hd]` with rotary applied
  to k. `forward` returns the new rows `[B, kvh, q, hd]`; `extend_cache` appends them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talon_rt.export.config import HeadConfig, Rope, TargetConfig

KV = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------------
# shared pieces


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # computed in float32, as transformers does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(rope: Rope, head_dim: int) -> Tensor:
    """inv_freq [hd/2] float32 for rope types default, linear and llama3 (HF semantics)."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.type == "linear":
        return inv / rope.factor
    if rope.type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv


def rope_cos_sin(inv_freq: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin [B, 1, q, hd] float32 for position_ids [B, q] (angles = position * inv_freq)."""
    freqs = position_ids.float()[..., None] * inv_freq.float()  # [B, q, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, h, q, hd]; rotate-half convention (HF Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def causal_mask(q: int, past_len: int, device=None) -> Tensor:
    """[1, q, P+q] bool: query i sees keys 0..P+i."""
    keys = torch.arange(past_len + q, device=device)
    return (keys[None, :] <= past_len + torch.arange(q, device=device)[:, None])[None]


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """q [B, nh, q, hd]; k, v [B, kvh, K, hd]; mask [B, q, K] bool -> [B, nh, q, hd] (softmax in fp32)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def extend_cache(cache: list[KV] | None, new: list[KV]) -> list[KV]:
    """Append the new rows of every layer to the cache (returns a new list)."""
    if cache is None:
        return list(new)
    return [(torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(cache, new)]


def _full_mask(mask: Tensor | None, q: int, past_len: int, device) -> Tensor:
    if mask is None:
        return causal_mask(q, past_len, device)
    if mask.shape[-2:] != (q, past_len + q):
        raise ValueError(f"mask shape {tuple(mask.shape)}: expected [B, {q}, {past_len + q}]")
    return mask.bool()


# ---------------------------------------------------------------------------------------------
# target


class Attention(nn.Module):
    def __init__(self, c: TargetConfig):
        super().__init__()
        self.nh, self.kvh, self.hd = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.qk_norm = c.qk_norm

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, past: KV | None):
        B, q, _ = x.shape
        qs = self.q_proj(x).view(B, q, self.nh, self.hd)
        ks = self.k_proj(x).view(B, q, self.kvh, self.hd)
        vs = self.v_proj(x).view(B, q, self.kvh, self.hd).transpose(1, 2)
        if self.qk_norm:
            qs, ks = self.q_norm(qs), self.k_norm(ks)
        qs = apply_rope(qs.transpose(1, 2), cos, sin)
        ks = apply_rope(ks.transpose(1, 2), cos, sin)
        k_all = ks if past is None else torch.cat([past[0], ks], 2)
        v_all = vs if past is None else torch.cat([past[1], vs], 2)
        out = attention(qs, k_all, v_all, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, q, -1)), (ks, vs)


class DecoderLayer(nn.Module):
    def __init__(self, c: TargetConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, c.mlp_bias)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Backbone(nn.Module):
    def __init__(self, c: TargetConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


@dataclass
class TargetOutput:
    logits: Tensor  # [B, q, V] float32
    features: Tensor  # [B, q, 3H]: hidden_states[i] for i in feature_layers, concatenated
    hidden_states: list[Tensor]  # L+1 entries, transformers' convention (last one before the final norm)
    new_kv: list[KV]  # per layer, [B, kvh, q, hd]; rotary applied to k


class Target(nn.Module):
    """Llama / Llama-3.1 / Qwen2 / Qwen3 causal LM (GQA). State-dict keys = the HF checkpoint's."""

    def __init__(self, c: TargetConfig):
        super().__init__()
        self.config = c
        self.model = Backbone(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(c.rope, c.head_dim), persistent=False)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, mask: Tensor | None = None,
                cache: list[KV] | None = None) -> TargetOutput:
        """input_ids [B, q]; position_ids [B, q] (default P..P+q-1); mask [B, q, P+q] bool (default causal)."""
        B, q = input_ids.shape
        P = 0 if cache is None else cache[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(P, P + q, device=input_ids.device)[None].expand(B, q)
        mask = _full_mask(mask, q, P, input_ids.device)
        cos, sin = rope_cos_sin(self.inv_freq, position_ids)
        x = self.model.embed_tokens(input_ids)
        hidden_states, new_kv = [x], []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos, sin, mask, None if cache is None else cache[i])
            hidden_states.append(x)
            new_kv.append(kv)
        logits = self.lm_head(self.model.norm(x)).float()
        features = torch.cat([hidden_states[i] for i in self.config.feature_layers], dim=-1)
        return TargetOutput(logits, features, hidden_states, new_kv)


# ---------------------------------------------------------------------------------------------
# EAGLE-3 head


class HeadAttention(nn.Module):
    """Attention of the EAGLE-3 layer: q/k/v take 2H inputs = cat(embedding, hidden)."""

    def __init__(self, c: HeadConfig):
        super().__init__()
        self.nh, self.kvh, self.hd = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(2 * c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(2 * c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(2 * c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, q, 2H] -> q [B, nh, q, hd], k, v [B, kvh, q, hd] (rotary applied to q and k)."""
        B, q, _ = x.shape
        qs = apply_rope(self.q_proj(x).view(B, q, self.nh, self.hd).transpose(1, 2), cos, sin)
        ks = apply_rope(self.k_proj(x).view(B, q, self.kvh, self.hd).transpose(1, 2), cos, sin)
        vs = self.v_proj(x).view(B, q, self.kvh, self.hd).transpose(1, 2)
        return qs, ks, vs


class HeadLayer(nn.Module):
    def __init__(self, c: HeadConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = HeadAttention(c)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, c.mlp_bias)


@dataclass
class HeadOutput:
    hidden_out: Tensor  # [B, q, H] pre-norm output of the layer (next step's hidden)
    logits: Tensor  # [B, q, Vd] float32, over the draft vocabulary
    key: Tensor  # [B, kvh, q, hd] this call's keys (rotary applied)
    value: Tensor  # [B, kvh, q, hd]


class Eagle3Head(nn.Module):
    """EAGLE-3 draft head in the published checkpoint format.

    Parameters: fc [H, 3H]; midlayer.{input_layernorm, hidden_norm, post_attention_layernorm};
    midlayer.self_attn.{q,k,v,o}_proj; midlayer.mlp.{gate,up,down}_proj; norm; lm_head [Vd, H];
    buffers d2t [Vd] (target_id = draft_id + d2t[draft_id]) and t2d [V] (bool: target id in draft vocab);
    optional embed_tokens [V, H] (absent in published heads: call `set_embedding` with the target's).

    One layer: x = cat(input_layernorm(embed(tok)), hidden_norm(h)); h' = h + o_proj(attn(x));
    hidden_out = h' + mlp(post_attention_layernorm(h')); logits = lm_head(norm(hidden_out)).

    Inference (`forward` with `cache`/`mask`): one call per tree layer, explicit positions and a
    boolean mask over cached + new keys. Training (`forward` without a cache): a full-sequence causal
    call; for training-time-test step j >= 1 pass `ttt_kv` = the (key, value) of steps 0..j-1.
    """

    def __init__(self, c: HeadConfig, with_embedding: bool = False):
        super().__init__()
        self.config = c
        H = c.hidden_size
        self.fc = nn.Linear(3 * H, H, bias=False)
        self.midlayer = HeadLayer(c)
        self.norm = RMSNorm(H, c.rms_norm_eps)
        self.lm_head = nn.Linear(H, c.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.zeros(c.vocab_size, dtype=torch.bool))
        self.embed_tokens = nn.Embedding(c.vocab_size, H) if with_embedding else None
        self._target_embed: Tensor | None = None
        self.register_buffer("inv_freq", rope_inv_freq(c.rope, c.head_dim), persistent=False)

    def set_embedding(self, weight: Tensor) -> None:
        """Use the target's embedding [V, H] (not a parameter of the head; not in its state dict)."""
        self._target_embed = weight

    def embed(self, input_ids: Tensor) -> Tensor:
        if self.embed_tokens is not None:
            return self.embed_tokens(input_ids)
        if self._target_embed is None:
            raise RuntimeError("Eagle3Head has no embed_tokens: call set_embedding(target embedding)")
        return F.embedding(input_ids, self._target_embed)

    def fuse(self, features: Tensor) -> Tensor:
        """features [B, q, 3H] (target taps, low -> mid -> high) -> hidden [B, q, H]."""
        return self.fc(features)

    def target_to_draft(self) -> Tensor:
        """[V] int64: each target id's draft index, -1 where it has none (d2t's inverse)."""
        index = torch.full((self.t2d.shape[0],), -1, dtype=torch.long, device=self.d2t.device)
        draft = torch.arange(self.d2t.shape[0], device=self.d2t.device)
        index[draft + self.d2t] = draft
        return index

    def draft_to_target(self, draft_ids: Tensor) -> Tensor:
        return draft_ids + self.d2t[draft_ids]

    def forward(self, input_ids: Tensor, hidden: Tensor, position_ids: Tensor | None = None,
                mask: Tensor | None = None, cache: KV | None = None,
                ttt_kv: list[KV] | None = None) -> HeadOutput:
        """input_ids [B, q] target ids; hidden [B, q, H]; position_ids [B, q] (default P..P+q-1).

        Inference: `cache` (k, v) [B, kvh, P, hd] and `mask` [B, q, P+q] bool (default causal).
        Training-time test, step j >= 1: `ttt_kv` = [(k0, v0), ..., (k_{j-1}, v_{j-1})] from the
        earlier steps over the same q positions. Query t then sees step-0 keys at positions <= t
        (`mask` [B, q, q] restricts that block further, e.g. padding) and the keys of steps 1..j at
        position t itself (the diagonal; step j's own key is the last of these).
        """
        c, lay = self.config, self.midlayer
        B, q = input_ids.shape
        P = 0 if cache is None else cache[0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(P, P + q, device=input_ids.device)[None].expand(B, q)
        cos, sin = rope_cos_sin(self.inv_freq, position_ids)
        normed_h = lay.hidden_norm(hidden)
        x = torch.cat([lay.input_layernorm(self.embed(input_ids).to(hidden.dtype)), normed_h], dim=-1)
        qs, ks, vs = lay.self_attn.qkv(x, cos, sin)
        if ttt_kv:
            if cache is not None:
                raise ValueError("Eagle3Head: pass either a cache (inference) or ttt_kv (training), not both")
            attn = _ttt_attention(qs, ks, vs, ttt_kv, mask)
        else:
            k_all = ks if cache is None else torch.cat([cache[0], ks], 2)
            v_all = vs if cache is None else torch.cat([cache[1], vs], 2)
            attn = attention(qs, k_all, v_all, _full_mask(mask, q, P, input_ids.device))
        residual = normed_h if c.norm_before_residual else hidden
        h = residual + lay.self_attn.o_proj(attn.transpose(1, 2).reshape(B, q, -1))
        h = h + lay.mlp(lay.post_attention_layernorm(h))
        logits = self.lm_head(self.norm(h)).float()
        return HeadOutput(h, logits, ks, vs)


def _ttt_attention(q: Tensor, k: Tensor, v: Tensor, ttt_kv: list[KV], mask: Tensor | None) -> Tensor:
    """Training-time-test attention: causal over step 0's keys plus a diagonal of later steps' keys.

    q [B, nh, T, hd]; k, v [B, kvh, T, hd] (this step's); ttt_kv[0] = step 0, ttt_kv[1:] = steps 1..j-1.
    """
    B, nh, T, hd = q.shape
    rep = nh // k.shape[1]
    k0, v0 = (t.repeat_interleave(rep, 1).float() for t in ttt_kv[0])
    block = causal_mask(T, 0, q.device) if mask is None else mask.bool()
    scale = 1.0 / math.sqrt(hd)
    s0 = (q.float() @ k0.transpose(-1, -2)) * scale  # [B, nh, T, T]
    s0 = s0.masked_fill(~block[:, None], float("-inf"))
    diag_k = [t.repeat_interleave(rep, 1).float() for t, _ in ttt_kv[1:]] + [k.repeat_interleave(rep, 1).float()]
    diag_v = [t.repeat_interleave(rep, 1).float() for _, t in ttt_kv[1:]] + [v.repeat_interleave(rep, 1).float()]
    sd = torch.stack([(q.float() * dk).sum(-1) * scale for dk in diag_k], -1)  # [B, nh, T, j]
    p = torch.cat([s0, sd], -1).softmax(-1)
    out = p[..., :T] @ v0 + (p[..., T:, None] * torch.stack(diag_v, -2)).sum(-2)
    return out.to(q.dtype)
