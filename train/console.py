"""The console every training step logs to: live progress bars on a terminal, one line per record in
log files."""
from __future__ import annotations

from rich.console import Console

console = Console()
if not console.is_terminal:
    console = Console(width=200)  # log files: one line per record
