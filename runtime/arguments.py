"""The command lines' argument parser: one-line errors and the exit code of a usage error."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and the same exit code as runtime errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")
