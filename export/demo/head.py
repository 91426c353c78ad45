"""Train the EAGLE-3 head on the frozen target's features and output distributions.

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

from export.config import HeadConfig, Rope, TargetConfig
from export.reference import Eagle3Head

from . import data, lm, loop
from .loop import console
from .recipe import HeadSpec, Recipe, TrainSpec


def draft_vocab(stream: np.ndarray, vocab: int, size: int) -> Tensor:
    """The `size` most frequent target ids of the stream, ascending [size] int64 (ties: lower id)."""
    counts = np.bincount(stream.astype(np.int64), minlength=vocab)
    order = np.lexsort((np.arange(vocab), -counts))[:size]  # by count desc, then id asc
    return torch.from_numpy(np.sort(order)).long()


def head_config(target: LlamaForCausalLM, spec: HeadSpec) -> HeadConfig:
    tc = TargetConfig.from_hf(target.config.to_dict())
    return HeadConfig(
        hidden_size=tc.hidden_size, intermediate_size=spec.intermediate, num_heads=tc.num_heads,
        num_kv_heads=tc.num_kv_heads, head_dim=tc.head_dim, vocab_size=tc.vocab_size,
        draft_vocab_size=spec.draft_vocab, rms_norm_eps=tc.rms_norm_eps, rope=tc.rope,
    )


def feature_layers(target: LlamaForCausalLM) -> tuple[int, int, int]:
    return TargetConfig.default_feature_layers(target.config.num_hidden_layers)


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


@dataclass(frozen=True)
class TargetPass:
    features: Tensor   # [B, T, 3H] taps low -> mid -> high
    soft: Tensor       # [B, T, Vd] target distribution restricted to the draft vocab
    greedy: Tensor     # [B, T] target argmax (target ids)


@torch.no_grad()
def target_pass(target: LlamaForCausalLM, ids: Tensor, draft_ids: Tensor, taps) -> TargetPass:
    with torch.autocast(**lm.AUTOCAST):
        out = target(input_ids=ids, output_hidden_states=True)
    logits = out.logits.float()
    features = torch.cat([out.hidden_states[i].float() for i in taps], dim=-1)
    return TargetPass(features, logits[..., draft_ids].softmax(-1), logits.argmax(-1))


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
        position_ids = (torch.arange(T) + j)[None].expand(B, T)
        out = head(shift(ids, 1 + j), hidden, position_ids=position_ids, ttt_kv=kv or None)
        kv.append((out.key, out.value))
        hidden = out.hidden_out
        yield j, out.logits


def ttt_loss(head: Eagle3Head, target: LlamaForCausalLM, ids: Tensor, spec: HeadSpec, taps) -> Tensor:
    draft_ids = torch.arange(len(head.d2t)) + head.d2t
    tp = target_pass(target, ids, draft_ids, taps)
    T = ids.shape[1]
    total = 0.0
    with torch.autocast(**lm.AUTOCAST):
        for j, logits in rollout(head, ids, tp.features, spec.ttt_steps):
            soft = shift(tp.soft, 1 + j)
            valid = shift(head.t2d[tp.greedy], 1 + j, False)
            valid[:, T - 1 - j :] = False
            ce = -(soft * F.log_softmax(logits.float(), -1)).sum(-1)
            total = total + spec.step_weight_decay**j * (ce * valid).sum() / valid.sum().clamp(min=1)
    return total


def train(recipe: Recipe, target: LlamaForCausalLM, stream: np.ndarray, work: Path,
          threads: int = 0) -> tuple[Eagle3Head, dict]:
    spec, tspec = recipe.head, recipe.head_train
    for p in target.parameters():
        p.requires_grad_(False)
    target.eval()
    taps = feature_layers(target)
    head = build(target, spec, draft_vocab(stream, target.config.vocab_size, spec.draft_vocab), tspec.seed)

    def step_loss(step: int) -> tuple[Tensor, int]:
        ids = torch.from_numpy(data.random_windows(stream, tspec.batch, tspec.seq_len, tspec.seed, step))
        return ttt_loss(head, target, ids, spec, taps), tspec.batch * tspec.seq_len

    stats = loop.train("head", head, step_loss, tspec, work, threads)
    head.eval()
    return head, stats


@torch.no_grad()
def agreement(head: Eagle3Head, target: LlamaForCausalLM, stream: np.ndarray, seq_len: int, steps: int,
              max_windows: int | None = None, batch: int = 4) -> dict:
    """Top-1 agreement of the head (feeding back its own hidden) with the target's greedy token, per
    rollout step 1..steps, over held-out positions: `per_step` counts every position, `chain` only
    those where steps 1..k all agreed (the acceptance rate of a depth-k chain); `coverage` = share of
    target greedy tokens inside the draft vocabulary (the ceiling for step 1)."""
    head.eval()
    taps = feature_layers(target)
    draft_ids = torch.arange(len(head.d2t)) + head.d2t
    windows = torch.from_numpy(data.fixed_windows(stream, seq_len, max_windows))
    hits = torch.zeros(steps)
    chain = torch.zeros(steps)
    count, covered = 0, 0
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch]
        T = ids.shape[1]
        tp = target_pass(target, ids, draft_ids, taps)
        n = T - steps  # indices t whose every step has a label (t + steps <= T - 1)
        alive = torch.ones(ids.shape[0], n, dtype=torch.bool)
        with torch.autocast(**lm.AUTOCAST):
            for j, logits in rollout(head, ids, tp.features, steps):
                guess = head.draft_to_target(logits.float().argmax(-1))[:, :n]
                ok = guess == tp.greedy[:, 1 + j : 1 + j + n]
                alive &= ok
                hits[j] += ok.sum()
                chain[j] += alive.sum()
        covered += int(head.t2d[tp.greedy[:, 1 : 1 + n]].sum())
        count += ids.shape[0] * n
    return {"positions": count, "coverage": covered / count,
            "per_step": [round(float(h) / count, 4) for h in hits],
            "chain": [round(float(c) / count, 4) for c in chain],
            "chain_mean_accepted": round(float(chain.sum()) / count, 3)}


def save(head: Eagle3Head, target: LlamaForCausalLM, folder: Path) -> None:
    """Published EAGLE-3 layout: config.json + model.safetensors (fp16; d2t int64, t2d bool)."""
    c = head.config
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
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


def run(recipe: Recipe, out: Path, work: Path, threads: int = 0) -> None:
    target = lm.load(out / "target")
    train_stream = data.load(work / "data" / "train.npy")
    heldout_stream = data.load(work / "data" / "heldout.npy")
    head, stats = train(recipe, target, train_stream, work / "head", threads)
    stats["agreement"] = agreement(head, target, heldout_stream, recipe.head_train.seq_len, 7,
                                   recipe.head_train.eval_windows)
    stats["params"] = sum(p.numel() for p in head.parameters())
    save(head, target, out / "eagle3")
    (work / "head" / "result.json").write_text(json.dumps(stats, indent=1))
    console.log(f"head: {stats}")
