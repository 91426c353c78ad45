"""`python -m talon_rt.runtime.bench ARGS` == `talon-rt bench ARGS`."""

from __future__ import annotations

import sys
from typing import Sequence

from talon_rt.runtime import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
