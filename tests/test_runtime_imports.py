"""The runtime stays lean: importing it (and the CLI) never pulls torch, export/ or train/ (docs/design.md §1)."""
from __future__ import annotations

import subprocess
import sys


def test_runtime_never_imports_torch_or_export():
    code = ("import sys, runtime.api, runtime.cli, runtime.backends.ort, runtime.backends.trt; "
            "runtime.cli.build_parser(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'export', 'train', 'transformers')); "
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"runtime imported: {r.stdout.strip()}"
