"""Training: the recipes that make the models export/ turns into engines. Needs torch (the `export`
extra); export/ never imports it, and the runtime never imports either.

    console.py      the one rich console every step logs to (a line per record in log files)
    threads.py      intra-op thread count that follows the load of a shared machine
    loop.py         `TrainSpec` and the one training loop: AdamW, warmup + cosine, resumable checkpoints
    corpus.py       the CPython standard-library corpus and its fixed train / held-out split by file
    target_pass.py  bf16 autocast and `TargetPass`: a frozen target's features, soft labels, greedy ids
    eagle3.py       the EAGLE-3 head's build, training-time-test loss, agreement and published layout
    readme.py       pieces of the model READMEs the recipes write from their recorded results
    prompts.py      benchmark prompt files: one {"id", "prompt"} JSON object per line
    recipes/        stdlib_pair: the stdlib pair (models/stdlib-pair); head: an EAGLE-3 head for a
                    real target (models/smollm2-eagle3). `python -m talon_rt.train.recipes.<name> --help`
"""
