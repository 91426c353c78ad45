"""talon-rt's execution layer (docs/design.md §1–§3, §7): engine directories, backends, the decode loop.

Core (imports talon/ and itself only; scripts/import_graph.py keeps the layers):
api.py        Generator: the Python facade (docs/python-api.md) the CLI, bench, serve and C API call
manifest/     an engine directory's manifest: schema.py (typed sections, parsing), files.py (names,
              external data, sizes, sha256), memory.py (KV bytes vs RAM), graph_io.py (I/O vs dims)
validate.py   the one engine validator: manifest + defaults + tokenizer (open, inspect and export run it)
digest.py     sha256 of a file, once per process per stat stamp
onnx_refs.py  the external-data files an ONNX graph references (protobuf read without onnx)
options.py    generation/session options, typed, with the manifest's defaults and the limits
backends/     Backend interface; ORT (CPU/CUDA, IO binding, static KV, session I/O), TensorRT, libcudart
decode.py     the loop: prefill, then rounds of build -> verify call -> accept -> commit -> learn
draft.py      the draft side of a round: the `expand` callback, scratch rows and tree masks
stats.py      RoundStats and RunStats (tau, delta, tokens/s, host share)
logprobs.py   the target's log-probabilities of emitted tokens (OpenAI logprobs)
chat.py       an engine's Jinja2 chat template, rendered as transformers renders it
text.py       decoded text of a growing token list, piece by piece (streaming)
costs.py      the measured cost model of `policy="talon-cost"`
profile.py    `python -m talon_rt.runtime.profile`: one round's time by step, and the verify-cost curve
arguments.py  ArgumentParser with one-line errors, EXIT_USAGE
errors.py     TalonError and its subclasses

Above the core:
serve/        `talon-rt serve`: the OpenAI-compatible HTTP API over a pool of instances
triton/       serving on Triton Inference Server
bench/        `talon-rt bench`: the paper's comparison and the peers
capi/         the C API (talon_rt.h) and its Python side
commands/     the `talon-rt` subcommands run, chat, inspect, serve, triton-repo
cli.py        `talon-rt`: the subcommands of commands/ and bench/
"""
