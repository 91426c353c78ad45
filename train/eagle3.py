"""The EAGLE-3 head's training pieces every recipe shares: a fresh head over a target, the
training-time-test rollout and loss, top-1 agreement with the target, and the published layout.

Training-time test (EAGLE-3): a window of T positions is rolled out `ttt_steps` times. Step j feeds,
at index t, the corpus token x[t+1+j] with the head's own step j-1 output hidden at index t (step 0:
fc(target features at t)), at rotary position t + j: exactly the node at depth j of a draft chain
rooted after x[t+1] (docs/engine-format.md, round structure). Step j's query at index t attends to the
step-0 keys at indices <= t and to the keys of steps 1..j at index t (`Eagle3Head` with `ttt_kv`).
Its label is the target's distribution at index t+1+j restricted to the draft vocabulary
(soft labels), weighted by decay**j; positions whose target argmax lies outside the draft vocabulary
carry no loss (the head cannot propose it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from transformers import LlamaForCausalLM

from talon_rt.export.config import HeadConfig, TargetConfig
from talon_rt.export.reference import Eagle3Head
from talon_rt.train.target_pass import TargetPass, autocast_for


@dataclass(frozen=True)
class HeadSpec:
    draft_vocab: int = 2048     # the most frequent target tokens; < vocab so d2t is a real mapping
    ttt_steps: int = 7          # training-time-test rollout length (the eagle3 policy drafts depth 7)
    step_weight_decay: float = 0.8  # loss weight of rollout step j is decay**j (EAGLE-3 uses 0.8)
    intermediate: int = 704     # the target's SwiGLU width; 0: the target's own
    hard_weight: float = 0.0    # weight of a hard (argmax) cross-entropy beside the soft one, per step


def draft_vocab(stream: np.ndarray, vocab: int, size: int) -> Tensor:
    """The `size` most frequent target ids of the stream, ascending [size] int64 (ties: lower id)."""
    counts = np.bincount(stream.astype(np.int64), minlength=vocab)
    order = np.lexsort((np.arange(vocab), -counts))[:size]  # by count desc, then id asc
    return torch.from_numpy(np.sort(order)).long()


def head_config(target: LlamaForCausalLM, spec: HeadSpec) -> HeadConfig:
    tc = TargetConfig.from_hf(target.config.to_dict())
    return HeadConfig(
        hidden_size=tc.hidden_size, intermediate_size=spec.intermediate or tc.intermediate_size,
        num_heads=tc.num_heads,
        num_kv_heads=tc.num_kv_heads, head_dim=tc.head_dim, vocab_size=tc.vocab_size,
        draft_vocab_size=spec.draft_vocab, rms_norm_eps=tc.rms_norm_eps, rope=tc.rope,
    )


def build(target: LlamaForCausalLM, spec: HeadSpec, ids: Tensor, seed: int) -> Eagle3Head:
    """A fresh head with d2t/t2d for draft ids `ids`, norm and lm_head rows copied from the target."""
    torch.manual_seed(seed)
    head = Eagle3Head(head_config(target, spec))
    with torch.no_grad():
        head.d2t.copy_(ids - torch.arange(len(ids)))
        head.t2d.zero_()
        head.t2d[ids] = True
        head.norm.weight.copy_(target.model.norm.weight)
        head.lm_head.weight.copy_(target.lm_head.weight[ids])
    head.set_embedding(target.model.embed_tokens.weight.detach())
    return head


def shift(x: Tensor, n: int, fill=0) -> Tensor:
    """x[:, t] <- x[:, t+n] along dim 1, padding the last n entries with `fill`."""
    if n == 0:
        return x
    pad = torch.full_like(x[:, :n], fill)
    return torch.cat([x[:, n:], pad], dim=1)


def rollout(head: Eagle3Head, ids: Tensor, features: Tensor, steps: int):
    """Yield (step j, logits [B, T, Vd]) for j = 0..steps-1 of the training-time test."""
    B, T = ids.shape
    hidden = head.fuse(features)
    kv = []
    for j in range(steps):
        position_ids = (torch.arange(T, device=ids.device) + j)[None].expand(B, T)
        out = head(shift(ids, 1 + j), hidden, position_ids=position_ids, ttt_kv=kv or None)
        kv.append((out.key, out.value))
        hidden = out.hidden_out
        yield j, out.logits


def rollout_loss(head: Eagle3Head, ids: Tensor, tp: TargetPass, spec: HeadSpec, mask: Tensor | None = None,
                 stats: dict | None = None, steps: int | None = None) -> Tensor:
    """Training-time-test loss of `head` on windows `ids` with the target's pass `tp`; `mask` [B, T]
    (optional) marks the label positions that may carry loss (e.g. response tokens, not padding).
    `stats`, when given, receives the step-1 top-1 agreement with the target's greedy token over the
    positions with loss (`acc1`, `acc1_n`). `steps`: roll out this many steps instead of
    `spec.ttt_steps` (a shorter rollout early in training: its cost grows with the step count)."""
    T = ids.shape[1]
    total = 0.0
    # the target's greedy token as a draft index (-1 where it has none: those positions are not `valid`)
    hard_all = head.target_to_draft()[tp.greedy] if spec.hard_weight else None
    with torch.autocast(**autocast_for(ids)):
        for j, logits in rollout(head, ids, tp.features, steps or spec.ttt_steps):
            soft = shift(tp.soft, 1 + j)
            valid = shift(head.t2d[tp.greedy], 1 + j, False)
            if mask is not None:
                valid &= shift(mask, 1 + j, False)
            valid[:, T - 1 - j :] = False
            logp = F.log_softmax(logits.float(), -1)
            ce = -(soft * logp).sum(-1)
            if hard_all is not None:
                hard = shift(hard_all, 1 + j).clamp(min=0)
                ce = ce - spec.hard_weight * logp.gather(-1, hard[..., None])[..., 0]
            total = total + spec.step_weight_decay**j * (ce * valid).sum() / valid.sum().clamp(min=1)
            if j == 0 and stats is not None:
                with torch.no_grad():
                    ok = head.draft_to_target(logits.argmax(-1)) == shift(tp.greedy, 1)
                    stats["acc1_n"] = int(valid.sum())
                    stats["acc1"] = float((ok & valid).sum()) / max(1, stats["acc1_n"])
    return total


class Agreement:
    """Counts, over batches, the head's top-1 agreement with the target's greedy token per rollout step
    1..steps: `per_step` counts every position, `chain` only those where steps 1..k all agreed (the
    acceptance rate of a depth-k chain); `coverage` = share of target greedy tokens inside the draft
    vocabulary (the ceiling for step 1). A position t counts when the labels of all its steps, at
    t+1 .. t+steps, exist and are allowed by `mask` (default: every position)."""

    def __init__(self, steps: int):
        self.steps = steps
        self.hits = torch.zeros(steps)
        self.chain = torch.zeros(steps)
        self.count, self.covered = 0, 0

    @torch.no_grad()
    def add(self, head: Eagle3Head, ids: Tensor, tp: TargetPass, mask: Tensor | None = None) -> None:
        label_ok = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        counted = torch.ones_like(label_ok)
        for j in range(self.steps):
            counted &= shift(label_ok, 1 + j, False)
        alive = counted.clone()
        with torch.autocast(**autocast_for(ids)):
            for j, logits in rollout(head, ids, tp.features, self.steps):
                ok = head.draft_to_target(logits.float().argmax(-1)) == shift(tp.greedy, 1 + j)
                alive &= ok
                self.hits[j] += int((ok & counted).sum())
                self.chain[j] += int(alive.sum())
        self.covered += int((head.t2d[shift(tp.greedy, 1)] & counted).sum())
        self.count += int(counted.sum())

    def result(self) -> dict:
        n = max(1, self.count)
        return {"positions": self.count, "coverage": self.covered / n,
                "per_step": [round(float(h) / n, 4) for h in self.hits],
                "chain": [round(float(c) / n, 4) for c in self.chain],
                "chain_mean_accepted": round(float(self.chain.sum()) / n, 3)}


def save(head: Eagle3Head, target: LlamaForCausalLM, folder: Path) -> None:
    """Published EAGLE-3 layout: config.json + model.safetensors (fp16; d2t int64, t2d bool)."""
    c = head.config
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous().cpu()
               for k, v in head.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    tcfg = target.config
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "draft_vocab_size": c.draft_vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope.theta,
        "max_position_embeddings": tcfg.max_position_embeddings,
        "bos_token_id": tcfg.bos_token_id,
        "eos_token_id": tcfg.eos_token_id,
        "pad_token_id": tcfg.pad_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
