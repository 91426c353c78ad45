"""A GGUF target as a Hugging Face folder (config.json, float32 model.safetensors, tokenizer files),
for the tools that only read HF folders: onnxruntime-genai's builder and transformers, the peers of
`talon-rt bench --peers`.

    python -m talon_rt.export.hf_folder FILE.gguf OUT_DIR

transformers dequantizes the GGUF itself (its own reader, not export/gguf.py), so a peer that emits
talon-rt's fp32 `ar` tokens from this folder checks the weights independently. A GGUF-loaded model
refuses `save_pretrained`: its weights go into a fresh model of the same config, which saves.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from talon_rt.export.errors import CheckpointError
from talon_rt.export.gguf import is_gguf


def write_hf_folder(gguf: str | Path, out: str | Path) -> Path:
    """Dequantize `gguf` to float32 and save it with its tokenizer as an HF folder at `out`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not is_gguf(gguf):
        raise CheckpointError(f"{gguf}: not a GGUF file (no GGUF magic)")
    transformers.logging.set_verbosity_error()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError) as e:  # an architecture or tensor type transformers does not read
        raise CheckpointError(f"{gguf}: transformers cannot load it: {str(e).splitlines()[0][:200]}") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # the saved folder holds float32 weights, not the GGUF's
        del config.quantization_config
    model = type(loaded)(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{gguf}: weights do not fit {type(model).__name__}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m talon_rt.export.hf_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", help="a GGUF file (llama.cpp's format)")
    p.add_argument("out", help="output folder")
    args = p.parse_args(argv)
    try:
        print(write_hf_folder(args.gguf, args.out))
    except CheckpointError as e:
        print(f"talon_rt.export.hf_folder: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
