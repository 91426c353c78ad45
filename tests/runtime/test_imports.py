"""The runtime stays lean: importing it (and the CLI) never pulls torch, export/ or train/ (docs/design.md §1)."""
from __future__ import annotations

import subprocess
import sys


def test_runtime_never_imports_torch_or_export():
    code = ("import sys, talon_rt.runtime.api, talon_rt.runtime.cli, talon_rt.runtime.backends.ort, "
            "talon_rt.runtime.backends.trt; "
            "talon_rt.runtime.cli.build_parser(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[m.startswith('talon_rt.')] in "
            "('torch', 'export', 'train', 'transformers')); "
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"runtime imported: {r.stdout.strip()}"
