"""`talon-rt inspect --engine DIR` (or `inspect DIR`): the manifest summary and the validation result (exit 0 valid, 2 invalid).

Valid means what `Generator.open` checks: talon_rt.runtime.validate.validate_engine, then every graph's I/O."""

from __future__ import annotations

import argparse

from talon_rt.runtime.errors import InputError, TalonError
from talon_rt.runtime.manifest import Manifest, open_manifest
from talon_rt.runtime.validate import validate_engine


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show and validate an engine directory",
                       description="Print an engine directory's manifest summary, then validate it as "
                                   "`run` does: schema, file names, external data, sizes and sha256, "
                                   "memory, defaults, tokenizer, graph I/O against the dims.")
    p.add_argument("-e", "--engine", metavar="DIR", help="engine directory")
    p.add_argument("engine_dir", nargs="?", metavar="DIR", help="the engine directory, given without --engine")
    p.set_defaults(func=run)


def source(m: Manifest) -> str:
    src = m.source
    if src is None:
        return "not recorded"
    quant = f" ({src['quantization']})" if src.get("quantization") else ""
    return f"{src['format'].upper()} {src['name']}{quant}"


def summary(m: Manifest) -> list[str]:
    md, dd, lim = m.model, m.draft, m.limits
    chat = (f"chat template ({len(m.tokenizer.chat_template)} chars), stop {list(m.tokenizer.stop_ids)}"
            if m.tokenizer.chat_template else "no chat template")
    lines = [
        f"engine      {m.name}  ({m.dir}, {m.created_by or 'unknown producer'})",
        f"source      {source(m)}",
        f"weights     target weights {md.weights}"
        + (f" ({md.compute} compute{'' if md.compute == 'float' else ': speculative output may leave ar where kernels round apart'})"
           if md.weights != "float" else "")
        + (f", draft weights {dd.weights}" if dd is not None else "") + f" ({md.dtype} activations and KV)",
        f"target      {md.architecture}, {md.num_layers} layers, hidden {md.hidden_size}, heads {md.num_heads}/"
        f"{md.num_kv_heads} kv, head_dim {md.head_dim}, vocab {md.vocab_size}, {md.dtype}",
        f"features    layers {list(md.feature_layers)} -> {m.feature_size}",
        (f"draft       EAGLE-3 head, hidden {dd.hidden_size}, heads {dd.num_heads}/{dd.num_kv_heads} kv, "
         f"draft vocab {dd.draft_vocab_size}, k_max {dd.k_max}" if dd is not None else
         "draft       none: a target-only engine (policies ar and lookup; the others need an EAGLE-3 head)"),
        f"tokenizer   {m.tokenizer.file}  bos {m.tokenizer.bos_id}  eos {list(m.tokenizer.eos_ids)}; {chat}",
        f"limits      max_seq_len {lim.max_seq_len}, max_tree_tokens {lim.max_tree_tokens}, "
        f"max_prefill_chunk {lim.max_prefill_chunk}",
        "defaults    " + ", ".join(f"{k}={v}" for k, v in m.defaults.items()),
        "graphs      " + ", ".join(f"{r}={m.graphs[r].file}" for r in m.roles),
        "plans       " + (", ".join(r for r in m.roles if m.plan(r)) or "none"),
        "files       " + ", ".join(f"{n} ({e.bytes} B)" for n, e in m.files.items()),
    ]
    return lines


def engine_arg(args: argparse.Namespace) -> str:
    if args.engine is None and args.engine_dir is None:
        raise InputError("inspect: the engine directory is missing (--engine DIR)")
    if args.engine is not None and args.engine_dir is not None and args.engine != args.engine_dir:
        raise InputError(f"inspect: two engine directories given ({args.engine_dir} and --engine {args.engine})")
    return args.engine if args.engine is not None else args.engine_dir


def run(args: argparse.Namespace) -> int:
    engine = engine_arg(args)
    m = open_manifest(engine, verify_checksums=False)
    for line in summary(m):
        print(line)
    from talon_rt.runtime.backends.ort import check_graphs
    try:
        check_graphs(validate_engine(engine)[0])
    except TalonError as e:   # the manifest defaults raise OptionError
        print(f"invalid     {e}")
        return 2
    print("valid       manifest, checksums, defaults, tokenizer and graph I/O match")
    return 0
