"""Tiny random target + EAGLE-3 head pairs, written in the real on-disk formats, for tests and CI.

`make_tiny_pair` writes an HF folder (transformers' own config/model classes + `save_pretrained`,
safetensors, a BPE `tokenizer.json` trained in-process) and an EAGLE-3 folder in the published format
(config.json + model.safetensors with fc, midlayer.*, norm, lm_head, d2t, t2d; no embedding). The draft
vocabulary is a random subset of the target's, so d2t is non-trivial. Seconds on a CPU, no downloads.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from export.config import HeadConfig, Rope
from export.reference import Eagle3Head

ARCHS = ("llama", "llama3.1", "qwen2", "qwen3")
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
_CORPUS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "import os\nimport sys\n\nclass Path:\n    def __init__(self, name):\n        self.name = name\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts a tree of tokens.",
    "if x is None:\n    raise ValueError('x must be set')\nelse:\n    return {k: v for k, v in x.items()}\n",
]


def hf_config(arch: str, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
              intermediate: int, init_std: float, tie_embeddings: bool = False):
    """A transformers config object of the given family (llama3.1 = Llama with llama3 rope scaling)."""
    import transformers as tf
    kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate,
              initializer_range=init_std, max_position_embeddings=4096, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie_embeddings)
    if arch == "llama":
        return tf.LlamaConfig(**kw)
    if arch == "llama3.1":
        # original_max_position_embeddings small so that the scaled band covers the tiny head_dim
        return tf.LlamaConfig(**kw, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    if arch == "qwen2":
        return tf.Qwen2Config(**kw)
    if arch == "qwen3":
        return tf.Qwen3Config(**kw)
    raise ValueError(f"arch {arch!r}: expected one of {ARCHS}")


def hf_model(config):
    import transformers as tf
    cls = {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM}
    return cls[config.model_type](config).eval()


def make_tokenizer(vocab: int):
    """A byte-level BPE tokenizer trained on a few strings (at most `vocab` tokens, specials 0..2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    return tok


def make_head(target_state: dict, vocab: int, draft_vocab: int, hidden: int, heads: int, kv_heads: int,
              head_dim: int, intermediate: int, init_std: float, gen: torch.Generator) -> Eagle3Head:
    """A random EAGLE-3 head; its draft vocab is a random subset of the target ids (always 0..2)."""
    cfg = HeadConfig(hidden_size=hidden, intermediate_size=intermediate, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=head_dim, vocab_size=vocab, draft_vocab_size=draft_vocab, rope=Rope())
    head = Eagle3Head(cfg)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(init_std * torch.randn(p.shape, generator=gen))
        rest = torch.randperm(vocab - 3, generator=gen)[: draft_vocab - 3] + 3
        kept = torch.cat([torch.arange(3), rest.sort().values])  # draft id -> target id, increasing
        head.d2t.copy_(kept - torch.arange(draft_vocab))
        head.t2d.zero_()
        head.t2d[kept] = True
    head.set_embedding(target_state["model.embed_tokens.weight"])
    return head


def make_tiny_pair(out_dir: str | Path, arch: str = "llama", seed: int = 0, vocab: int = 320,
                   draft_vocab: int = 160, hidden: int = 64, layers: int = 8, heads: int = 4, kv_heads: int = 2,
                   head_dim: int = 16, intermediate: int = 128, init_std: float = 0.1,
                   head_rope_theta: float | None = None, tie_embeddings: bool = False) -> tuple[Path, Path]:
    """Write `<out_dir>/target` (HF folder) and `<out_dir>/draft` (EAGLE-3 folder); returns both paths.

    init_std 0.1 (not HF's 0.02) gives peaked, seed-stable next-token distributions, so greedy
    comparisons are not decided by float near-ties. `head_rope_theta` None omits rope_theta from the
    head's config, like the official EAGLE-3 heads (the head then uses base 10000). tie_embeddings:
    lm_head shares the embedding (small Qwen models do this).
    """
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    model_dir, draft_dir = out_dir / "target", out_dir / "draft"
    model_dir.mkdir(parents=True, exist_ok=True)
    draft_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = hf_config(arch, vocab, hidden, layers, heads, kv_heads, head_dim, intermediate, init_std,
                       tie_embeddings)
    model = hf_model(config)
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0; perturb them so each one matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(init_std * torch.randn_like(p))
    model.save_pretrained(model_dir)
    tok = make_tokenizer(vocab)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 4096}, indent=2))

    gen = torch.Generator().manual_seed(seed + 1)
    state = model.state_dict()
    head = make_head(state, vocab, draft_vocab, hidden, heads, kv_heads, head_dim, intermediate, init_std, gen)
    head_state = {k: v.contiguous() for k, v in head.state_dict().items()}
    save_file(head_state, str(draft_dir / "model.safetensors"))
    head_cfg = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "num_hidden_layers": 1,
        "vocab_size": vocab, "draft_vocab_size": draft_vocab, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "torch_dtype": "float32", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    if head_rope_theta is not None:
        head_cfg["rope_theta"] = head_rope_theta
    (draft_dir / "config.json").write_text(json.dumps(head_cfg, indent=2))
    return model_dir, draft_dir
