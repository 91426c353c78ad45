"""The frozen target and its tokenizer, from a Hugging Face folder or a GGUF file (via transformers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from talon_rt.export.config import TargetConfig
from talon_rt.export.errors import CheckpointError


def load(model: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(transformers causal LM in eval mode with frozen weights on `device`, tokenizer) for a folder or a
    .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = Path(model)
    if model.is_file() and model.suffix == ".gguf":
        where, kwargs = model.parent, {"gguf_file": model.name}
    elif model.is_dir():
        where, kwargs = model, {}
    else:
        raise CheckpointError(f"{model}: not a Hugging Face model folder or a .gguf file")
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except Exception as e:  # transformers raises many types for a damaged or foreign file
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{model}: transformers cannot load it ({type(e).__name__}: {first:.300})") from None
    TargetConfig.from_hf(lm.config.to_dict(), str(model))  # the exporter must support the architecture
    if tok.chat_template is None:
        raise CheckpointError(f"{model}: the tokenizer has no chat template (self-distillation renders chats)")
    lm.to(device).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, tok


def stop_ids(lm, tok) -> list[int]:
    """End-of-turn ids: the config's eos id(s) and the tokenizer's eos token."""
    eos = lm.generation_config.eos_token_id if lm.generation_config is not None else None
    eos = eos if eos is not None else lm.config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    if not ids:
        raise CheckpointError("the target names no eos token id (config.json eos_token_id)")
    return sorted(ids)


def render(tok, user: str) -> list[int]:
    """Token ids of a one-turn chat with the generation prompt appended."""
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                   tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class TargetView:
    """What `talon_rt.export.checkpoints.load_head` reads of a target (typed config, embedding, lm_head dtype),
    over a transformers model."""
    config: TargetConfig
    model: torch.nn.Module
    lm_head: torch.nn.Module


def view(lm) -> TargetView:
    return TargetView(TargetConfig.from_hf(lm.config.to_dict()), lm.model, lm.lm_head)
