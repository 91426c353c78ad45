"""talon-rt's execution layer (docs/design.md §1–§3, §7): engine directories, backends, the decode loop.

api.py        Generator: the Python facade (docs/python-api.md) the CLI, bench and C API call
manifest.py   open and validate an engine directory (schema, names, sha256, graph I/O vs dims)
options.py    generation/session options, typed, with the manifest's defaults and the limits
backends/     Backend interface; ORT (CPU/CUDA, IO binding, static KV), TensorRT, libcudart helpers
decode.py     the loop: prefill, then rounds of build -> verify call -> accept -> commit -> learn
draft.py      the draft side of a round: the `expand` callback, scratch rows and tree masks
stats.py      RoundStats and RunStats (tau, delta, tokens/s, host share)
profile.py    `python -m runtime.profile`: one round's time by step, and the verify-cost curve
cli.py        `talon-rt`; subcommands in commands/ (run, inspect) and bench/
errors.py     TalonError and its subclasses
"""
