"""`python -m talon_rt.export --model DIR [--draft DIR] --out DIR`: build an engine directory (docs/engine-format.md);
without --draft, a target-only engine (policy ar).

SIGINT and SIGTERM, at any point (imports included), remove the export's temp dir and end with one
line on stderr and exit code 128 + the signal number.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from talon_rt.export.errors import ExportError
from talon_rt.export.signals import signals_held

PROG = "python -m talon_rt.export"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so that the same cleanup runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _default(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def parse_args(argv=None) -> argparse.Namespace:
    from talon_rt.export.build import DRAFT_WEIGHTS, ExportOptions
    _D = ExportOptions()
    p = argparse.ArgumentParser(prog=PROG, description="Build an engine directory "
                                "(docs/engine-format.md) from a local HF target or GGUF file and, optionally, an EAGLE-3 head.")
    p.add_argument("--model", required=True, type=Path, help="the target: a local Hugging Face folder or a GGUF file (llama.cpp format)")
    p.add_argument("--draft", type=Path, help="local EAGLE-3 head folder (default: none, a target-only engine "
                                              "that runs policy ar)")
    p.add_argument("--out", required=True, type=Path, help="engine directory to create")
    p.add_argument("--name", help="engine name in the manifest (default: the --out folder name)")
    p.add_argument("--dtype", default=_D.dtype, choices=["float32", "float16"],
                   help="weights, KV, features and hidden (logits stay float32; default %(default)s)")
    p.add_argument("--max-seq-len", type=int, default=_D.max_seq_len,
                   help="rows of every static KV buffer: prompt + generated (default: the model's context, "
                        "max_position_embeddings or a GGUF's context_length, capped so that the target's KV "
                        "cache takes at most 1 GiB; the export log says the value and why)")
    p.add_argument("--max-tree-tokens", type=int, default=_D.max_tree_tokens,
                   help="largest verify call, root included: the top tree budget (default %(default)s)")
    p.add_argument("--max-prefill-chunk", type=int, default=_D.max_prefill_chunk,
                   help="largest prefill call (default %(default)s)")
    p.add_argument("--k-max", type=int, default=_D.k_max,
                   help="children per draft row in topk_ids/topk_logp (default %(default)s)")
    p.add_argument("--flavour", default=_D.flavour, choices=["ort", "gqa", "standard"],
                   help="target attention: ort (ONNX Runtime's fused ops with row-invariant attention: every "
                        "verified row equals ar's bit for bit), gqa (ORT's GroupQueryAttention writing the KV "
                        "cache in place; its one-row and many-row paths round apart) or standard (standard ONNX "
                        "ops: ORT CPU and CUDA, TensorRT); the draft is gqa for ort (default %(default)s)")
    p.add_argument("--draft-weights", default=_D.draft_weights, choices=["float", "int8", "int4"],
                   help="draft graphs' MatMul weights: float, or int8/int4 blockwise (ORT only; lossless, "
                        f"the target verifies every draft token; default {DRAFT_WEIGHTS} for a float32 ORT "
                        "flavour, else float)")
    p.add_argument("--target-weights", default=_D.target_weights, choices=["float", "int8", "int4"],
                   help="target's MatMul, LM head and embedding weights: float, or int8/int4 blockwise (ORT only; "
                        "a smaller, faster, different model; a GGUF's Q4_0/Q8_0 blocks are kept where exact; "
                        "default %(default)s)")
    p.add_argument("--target-compute", default=_D.target_compute, choices=["int8", "float"],
                   help="activations of an int8/int4 target's MatMulNBits: int8 (fast kernels; speculative "
                        "output can leave ar's where ORT's one-row and many-row kernels round "
                        "apart) or float (speculative output equals ar's; slower); default %(default)s")
    p.add_argument("--default", action="append", type=_default, default=[], metavar="KEY=VALUE",
                   help="a manifest default the runtime uses when a caller leaves the option out, e.g. "
                        "budget=8 mu=0.3 root_k=1 from a `talon-rt bench --sweep` (repeatable)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--check", action="store_true",
                   help="run the graphs once through ONNX Runtime against the PyTorch reference before finishing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _export(argv)
    except KeyboardInterrupt as e:
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        print(f"{PROG}: interrupted by {signum.name}; no engine directory written", file=sys.stderr)
        return 128 + signum


def _export(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.markup import escape
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, even in a pipe
    t0 = time.perf_counter()
    # torch, onnx and numpy's C imports take a signal badly (a RecursionError, an abort, or CPython's
    # exit by the signal after it was handled): it waits until they are loaded, then interrupts here
    with signals_held():
        from talon_rt.export.build import ExportOptions, export_engine
    try:
        opts = ExportOptions(dtype=args.dtype, max_seq_len=args.max_seq_len, max_tree_tokens=args.max_tree_tokens,
                             max_prefill_chunk=args.max_prefill_chunk, k_max=args.k_max,
                             flavour=args.flavour, draft_weights=args.draft_weights,
                             target_weights=args.target_weights, target_compute=args.target_compute,
                             defaults=tuple(args.default))
        export_engine(args.model, args.draft, args.out, opts, name=args.name, force=args.force,
                      check=args.check,
                      log=lambda msg: console.print(f"[green]✓[/] {escape(msg)}"))
    except ExportError as e:
        console.print(f"[red]export failed:[/] {escape(str(e))}")
        return 1
    console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    code = main()
    if code > 128:
        # Interrupted and cleaned up. A KeyboardInterrupt that passed through an extension's own Python
        # call (torch, transformers, numpy import code) leaves CPython's "unhandled interrupt" flag set
        # although main() handled it, and the interpreter would then kill itself with the signal at exit
        # instead of returning `code`: end here, streams flushed, with the code the message promised.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
