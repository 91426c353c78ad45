"""`talon-rt`: the command line. Each subcommand is a module with `add_parser(subparsers)`, which
registers its parser and sets `func(args) -> exit code`; adding one is a line in SUBCOMMANDS.

Errors the user can fix (talon_rt.runtime.errors.TalonError, bad arguments) print one line on stderr and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from talon_rt.runtime.arguments import EXIT_USAGE, ArgumentParser
from talon_rt.runtime.errors import TalonError

SUBCOMMANDS = ("talon_rt.runtime.commands.run", "talon_rt.runtime.commands.chat", "talon_rt.runtime.commands.inspect", "talon_rt.runtime.bench.cli", "talon_rt.runtime.commands.serve",
               "talon_rt.runtime.commands.triton_repo")


def version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("talon-rt")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="talon-rt", description="Speculative decoding with adaptive draft trees "
                            "(TALON) and EAGLE-3 heads on ONNX Runtime / TensorRT.")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=ArgumentParser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:     # a subcommand whose module is not written yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)    # imports every subcommand
    except KeyboardInterrupt:
        print("talon-rt: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except TalonError as e:
        print(f"talon-rt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"talon-rt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()   # stdout closed early (| head): not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
