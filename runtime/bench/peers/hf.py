"""Hugging Face transformers on CPU: greedy `generate`, assisted generation with the standalone
draft LM, and prompt lookup decoding. torch and transformers are imported here only."""

from __future__ import annotations

import os
from typing import Any, Callable

from talon_rt.runtime.bench.peers import PeerUnavailable

PROMPT_LOOKUP_TOKENS = 10  # transformers' documented example value


def open_peer(job: dict) -> tuple[Callable[[list[int], int], tuple[list[int], int | None]], dict[str, Any]]:
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise PeerUnavailable(f"transformers/torch not installed ({e.name}); pip install -e '.[export]'") from None
    torch.set_num_threads(job["threads"])
    transformers.logging.set_verbosity_error()

    def load(path: str):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    model = load(job["hf_model"])
    extra: dict[str, Any] = {}
    if job["mode"] == "assisted":
        extra["assistant_model"] = load(job["draft_lm"])
    elif job["mode"] == "prompt_lookup":
        extra["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_TOKENS
    elif job["mode"] != "greedy":
        raise PeerUnavailable(f"unknown transformers mode {job['mode']!r}")
    cfg = model.generation_config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id

    def generate(ids: list[int], max_new_tokens: int) -> tuple[list[int], int | None]:
        x = torch.tensor([ids], dtype=torch.long)
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, **extra)
        new = [int(t) for t in out[0, len(ids):]]
        return new, len(new) if job["mode"] == "greedy" else None

    detail = {"transformers": transformers.__version__, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    return generate, detail
