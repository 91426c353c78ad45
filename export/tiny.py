"""Tiny random target + EAGLE-3 head pairs, written in the real on-disk formats, for tests and CI.

`make_tiny_pair` writes an HF folder (transformers' own config/model classes + `save_pretrained`,
safetensors, a BPE `tokenizer.json` trained in-process) and an EAGLE-3 folder in the published format
(config.json + model.safetensors with fc, midlayer.*, norm, lm_head, d2t, t2d; no embedding). The draft
vocabulary is a random subset of the target's, so d2t is non-trivial. Seconds on a CPU, no downloads.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from talon_rt.export.config import HeadConfig, Rope
from talon_rt.export.reference import Eagle3Head

ARCHS = ("llama", "llama3.1", "qwen2", "qwen3")
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
# ChatML (SmolLM2's and Qwen's template); with chat=True its turn markers are special ids 3 and 4
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]
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


def make_tokenizer(vocab: int, chat: bool = False):
    """A byte-level BPE tokenizer trained on a few strings (at most `vocab` tokens, specials 0..2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS + CHAT_SPECIALS if chat else SPECIALS
    if vocab < 256 + len(specials):
        # byte-level BPE needs all 256 bytes: a smaller vocabulary gets single characters (others -> <pad>),
        # so the tokenizer never outgrows the model
        chars = [c for c in string.printable if not c.isspace()][:vocab - len(specials)]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[],
                                   unk_token=specials[0]))
        tok.add_special_tokens(specials)
        return tok
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
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


def save_head(head: Eagle3Head, out_dir: str | Path, rope_theta: float | None = None) -> Path:
    """`head` in the published EAGLE-3 layout: config.json + model.safetensors (no embedding).
    rope_theta None leaves it out of the config, as the official heads do (base 10000)."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = head.config
    save_file({k: v.contiguous() for k, v in head.state_dict().items() if k != "embed_tokens.weight"},
              str(out_dir / "model.safetensors"))
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "num_hidden_layers": 1,
        "vocab_size": c.vocab_size, "draft_vocab_size": c.draft_vocab_size, "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": 4096, "torch_dtype": "float32", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }
    if rope_theta is not None:
        cfg["rope_theta"] = rope_theta
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    return out_dir


def write_random_head(target, out_dir: str | Path, draft_vocab: int, seed: int = 0, init_std: float = 0.02) -> Path:
    """A random EAGLE-3 head shaped for the reference `target` (talon_rt.export.reference.Target), saved with
    `save_head`: lossless decoding needs no trained head, so tests of a real model use one."""
    c = target.config
    head = make_head({"model.embed_tokens.weight": target.model.embed_tokens.weight.detach().float()}, c.vocab_size,
                     draft_vocab, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                     init_std, torch.Generator().manual_seed(seed))
    return save_head(head, out_dir, rope_theta=c.rope.theta)


def make_tiny_pair(out_dir: str | Path, arch: str = "llama", seed: int = 0, vocab: int = 320,
                   draft_vocab: int = 160, hidden: int = 64, layers: int = 8, heads: int = 4, kv_heads: int = 2,
                   head_dim: int = 16, intermediate: int = 128, init_std: float = 0.1,
                   head_rope_theta: float | None = None, tie_embeddings: bool = False,
                   chat: bool = False) -> tuple[Path, Path]:
    """Write `<out_dir>/target` (HF folder) and `<out_dir>/draft` (EAGLE-3 folder); returns both paths.

    init_std 0.1 (not HF's 0.02) gives peaked, seed-stable next-token distributions, so greedy
    comparisons are not decided by float near-ties. `head_rope_theta` None omits rope_theta from the
    head's config, like the official EAGLE-3 heads (the head then uses base 10000). tie_embeddings:
    lm_head shares the embedding (small Qwen models do this). chat: the tokenizer gets ChatML's turn
    markers and tokenizer_config.json its template (`CHATML`).
    """
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
    tok = make_tokenizer(vocab, chat)
    tok.save(str(model_dir / "tokenizer.json"))
    tok_cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 4096}
    if chat:
        tok_cfg["chat_template"] = CHATML
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))

    gen = torch.Generator().manual_seed(seed + 1)
    head = make_head(model.state_dict(), vocab, draft_vocab, hidden, heads, kv_heads, head_dim, intermediate,
                     init_std, gen)
    save_head(head, draft_dir, rope_theta=head_rope_theta)
    return model_dir, draft_dir


# ggml types a tiny GGUF can store its matrices in (all need rows that are multiples of 32)
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")


def write_gguf(model_dir: str | Path, path: str | Path, qtype: str = "Q8_0", meta: dict | None = None) -> Path:
    """The tiny HF Llama folder of `make_tiny_pair` as a GGUF file, written the way llama.cpp's
    converter writes one: q/k rows permuted per head, matrices in `qtype` (norms stay F32), the BPE
    tokenizer as `gpt2` vocabulary + merges with its special tokens as control tokens, and the
    folder's chat template if it has one. `meta` replaces metadata values (None removes the key):
    hostile files for the tests."""
    import gguf
    from safetensors.torch import load_file

    model_dir, path = Path(model_dir), Path(path)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg["model_type"] != "llama":
        raise ValueError(f"write_gguf: model_type {cfg['model_type']!r}, expected 'llama'")
    state = {k: v.float().numpy() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    w = gguf.GGUFWriter(str(path), "llama")
    tokens = _gguf_vocabulary(model_dir)
    _gguf_model_metadata(w, model_dir.name, cfg, len(tokens), qtype)
    _gguf_tokenizer(w, model_dir, cfg, tokens)
    _gguf_tensors(w, state, cfg, qtype)
    _gguf_replace_metadata(w, meta or {})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_vocabulary(model_dir: Path) -> list[str]:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    return [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]


def _gguf_model_metadata(w, name: str, cfg: dict, vocab: int, qtype: str) -> None:
    import gguf

    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(vocab)
    w.add_file_type(getattr(gguf.LlamaFileType, "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"))


def _gguf_tokenizer(w, model_dir: Path, cfg: dict, tokens: list[str]) -> None:
    """The BPE tokenizer as llama.cpp's `gpt2` model: vocabulary, token types, merges, special ids, template."""
    import gguf

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    specials = {a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    chat_template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight"}


def _gguf_tensors(w, state: dict, cfg: dict, qtype: str) -> None:
    """Every weight under its llama.cpp name; matrices in `qtype`, q/k rows permuted per head."""
    import gguf
    import numpy as np

    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(w: np.ndarray, n: int) -> np.ndarray:  # llama.cpp's LlamaModel.permute
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    kind = gguf.GGMLQuantizationType[qtype]
    for key, value in state.items():
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers."):].split(".", 1)
            name = f"blk.{i}.{GGUF_LAYER_NAMES[rest]}"
            if rest == "self_attn.q_proj.weight":
                value = permute(value, heads)
            elif rest == "self_attn.k_proj.weight":
                value = permute(value, kv_heads)
        else:
            name = GGUF_NAMES[key]
        if value.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, value.astype(np.float32))


def _gguf_replace_metadata(w, meta: dict) -> None:
    """Each `meta` key's value replaces the written one (None: the key is removed)."""
    import gguf

    for key, value in meta.items():
        w.kv_data[0].pop(key, None)
        if value is not None:
            vtype = (gguf.GGUFValueType.BOOL if isinstance(value, bool) else gguf.GGUFValueType.INT64
                     if isinstance(value, int) else gguf.GGUFValueType.FLOAT32 if isinstance(value, float)
                     else gguf.GGUFValueType.STRING)
            w.add_key_value(key, value, vtype)
