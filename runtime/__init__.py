"""talon-rt's execution layer (docs/design.md §1–§3, §7): engine directories, backends, the decode loop.

api.py        Generator: the Python facade (docs/python-api.md) the CLI, bench and C API call
manifest.py   read an engine directory's manifest and files (schema, names, sha256, memory, graph I/O vs dims)
validate.py   the one engine validator: manifest + defaults + tokenizer (open, inspect and export run it)
digest.py     sha256 of a file, once per process per stat stamp
onnx_refs.py  the external-data files an ONNX graph references (protobuf read without onnx)
options.py    generation/session options, typed, with the manifest's defaults and the limits
backends/     Backend interface; ORT (CPU/CUDA, IO binding, static KV), TensorRT, libcudart helpers
decode.py     the loop: prefill, then rounds of build -> verify call -> accept -> commit -> learn
draft.py      the draft side of a round: the `expand` callback, scratch rows and tree masks
stats.py      RoundStats and RunStats (tau, delta, tokens/s, host share)
profile.py    `python -m runtime.profile`: one round's time by step, and the verify-cost curve
cli.py        `talon-rt`; subcommands in commands/ (run, inspect) and bench/
errors.py     TalonError and its subclasses
"""
