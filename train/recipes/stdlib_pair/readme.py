"""models/stdlib-pair/README.md, written from the recipe's recorded results (never typed by hand)."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
import transformers

from talon_rt.train.corpus import HELDOUT_MOD, SKIP_DIRS
from talon_rt.train.readme import agreement_lines, folder_mb, load_json, notes_lines

from .recipe import Recipe

COMMAND = ".venv/bin/python -m talon_rt.train.recipes.stdlib_pair all --out models/stdlib-pair --work runs/stdlib-pair"


def _lm_rows(name: str, r: dict | None, spec, tspec) -> list[str]:
    if r is None:
        return [f"| {name} | not trained yet | | | | | |"]
    return [f"| {name} | {spec.layers} x d={spec.hidden}, {spec.heads} heads / {spec.kv_heads} KV heads, "
            f"SwiGLU {spec.intermediate} | {r['params'] / 1e6:.2f} M | {r['tokens'] / 1e6:.2f} M "
            f"({r['tokens'] / r['corpus_tokens']:.1f} epochs) | {r['loss']:.3f} | {r['heldout_loss']:.3f} | "
            f"{r['seconds'] / 60:.1f} min, {r['tokens'] / r['seconds']:,.0f} tok/s |"]


def write(recipe: Recipe, out: Path, work: Path) -> None:
    stats = load_json(work / "data" / "stats.json") or {}
    target, draft_lm, head = (load_json(work / n / "result.json") for n in ("target", "draft-lm", "head"))
    tr, ho = stats.get("train", {}), stats.get("heldout", {})
    lines = [
        "# The stdlib pair",
        "",
        "A small Llama-architecture target, its EAGLE-3 draft head and a 2-layer draft LM, trained on this",
        "machine (2 CPU cores) by the recipe in `train/recipes/stdlib_pair/`; `python -m talon_rt.export --model",
        "models/stdlib-pair/target --draft models/stdlib-pair/eagle3 --out DIR` exports them.",
        "This file is written by the recipe from its recorded results.",
        "",
        "    " + COMMAND,
        "",
        f"Reproduces every file here (Python {platform.python_version()} standard library as the corpus, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; data order and",
        "initialisation are seeded, so a rerun matches up to floating-point reduction order). Steps can run",
        "one at a time (`tokenizer`, `corpus`, `target`, `head`, `draftlm`, `readme`) and resume from",
        "`runs/stdlib-pair/<step>/ckpt.pt` when interrupted.",
        "",
        "## Corpus and tokenizer",
        "",
        f"- The `*.py` files of the CPython standard library, skipping directories named "
        f"{', '.join(sorted(SKIP_DIRS))}.",
        f"- Split by file: a file is held out when sha256(relative path) mod {HELDOUT_MOD} == 0 "
        f"(`heldout_files.txt`).",
        f"- Train: {tr.get('files', '?')} files, {tr.get('chars', 0) / 1e6:.1f} M characters, "
        f"{tr.get('tokens', 0) / 1e6:.2f} M tokens; held-out: {ho.get('files', '?')} files, "
        f"{ho.get('tokens', 0) / 1e3:.0f} k tokens.",
        f"- `tokenizer.json`: byte-level BPE, {recipe.tokenizer_vocab} tokens; `<pad>`=0, `<s>`=1 (BOS), "
        "`</s>`=2 (EOS). `encode` prepends BOS; every training document is `<s>` file `</s>`.",
        "",
        "## Models (fp16 safetensors)",
        "",
        "| model | shape | params | tokens seen | train loss | held-out loss | training |",
        "|---|---|---|---|---|---|---|",
        *_lm_rows("`target/`", target, recipe.target, recipe.target_train),
        *_lm_rows("`draft-lm/`", draft_lm, recipe.draft_lm, recipe.draft_lm_train),
        "",
        "Losses are next-token cross-entropy in nats: train = moving average over the last ~20 steps,",
        f"held-out = every non-overlapping window of the held-out split. Training: AdamW (0.9, 0.95), "
        f"bf16 autocast, warmup + cosine; target lr {recipe.target_train.lr:g}, "
        f"{recipe.target_train.batch} x {recipe.target_train.seq_len} tokens per step.",
        "",
        "## EAGLE-3 head (`eagle3/`)",
        "",
    ]
    if head is None:
        lines += ["Not trained yet.", ""]
    else:
        a = head["agreement"]
        hs = recipe.head
        lines += [
            f"One decoder layer on the target's taps hidden_states[2, L//2, L-3] = [2, 6, 9] "
            f"(published EAGLE-3 layout: `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`, `t2d`; the embedding "
            f"is the target's). {head['params'] / 1e6:.2f} M parameters; draft vocabulary = the "
            f"{hs.draft_vocab} most frequent training tokens (`d2t` maps them to target ids).",
            f"Trained on the target's soft labels (its distribution restricted to the draft vocabulary) with "
            f"{hs.ttt_steps}-step training-time test (step weight {hs.step_weight_decay}^j), "
            f"{head['tokens'] / 1e6:.2f} M positions, {head['seconds'] / 60:.1f} min "
            f"({head['tokens'] / head['seconds']:,.0f} positions/s); norm and lm_head rows initialised "
            f"from the target's. Final train loss (sum over steps) {head['loss']:.3f}.",
            "",
            f"Top-1 agreement with the target's greedy token on {a['positions']:,} held-out positions, the head "
            "feeding back its own hidden states (step k drafts the k-th token after the last target "
            "feature; inputs are the corpus tokens):",
            "",
            *agreement_lines(a),
            "Every step is fed the true next token, so step k differs from step 1 only in using the head's own",
            "hidden state where the target's features are missing; a flat row means the head predicts mostly",
            "from the tokens and little from the features.",
            "",
        ]
    lines += [
        *notes_lines(work),
        "## Files",
        "",
        f"- `target/` ({folder_mb(out / 'target'):.1f} MB): HF Llama folder (config.json, model.safetensors, "
        "tokenizer files; `transformers.LlamaForCausalLM.from_pretrained` loads it).",
        f"- `eagle3/` ({folder_mb(out / 'eagle3'):.1f} MB): EAGLE-3 head (config.json with `draft_vocab_size`, "
        "model.safetensors).",
        "- `draft-lm/`: not committed (the repository's weight budget goes to the real model's head); "
        "`python -m talon_rt.train.recipes.stdlib_pair draftlm` rebuilds it for the peers' `--draft-lm` mode.",
        "- `tokenizer.json`, `heldout_files.txt`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
