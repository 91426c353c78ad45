"""Byte-level BPE tokenizer for the stdlib corpus (Hugging Face `tokenizers`)."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from talon_rt.train.corpus import CorpusFile

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # the trainer assigns special tokens first, in this order


def train(files: list[CorpusFile], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((f.text for f in files), trainer=trainer, length=len(files))
    # encode(text) yields BOS + text, the same framing as a training document (which also ends in EOS).
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
    for name, want in ((PAD, PAD_ID), (BOS, BOS_ID), (EOS, EOS_ID)):
        if tok.token_to_id(name) != want:
            raise RuntimeError(f"tokenizer: special token {name} got id {tok.token_to_id(name)}, want {want}")
    return tok


def load(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def save_for_transformers(tok: Tokenizer, folder: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json, so AutoTokenizer (and onnxruntime-genai) load the folder.
    The class is the generic fast tokenizer, which transformers v4 and v5 both read."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
           "model_max_length": max_length}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
