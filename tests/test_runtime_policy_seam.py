"""runtime/ reaches the draft-tree policies only through their interface (talon/policy.py `Policy`):
no module of it names a policy class, so no isinstance chain can grow there again."""
from __future__ import annotations

import ast
from pathlib import Path

import talon
from talon import POLICIES

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"


def policy_class_mentions(root: Path, names: set[str]) -> list[str]:
    """`file:line name` for every import, name or attribute of `root`'s Python files that is in `names`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.alias):
                name = node.name.rsplit(".", 1)[-1]
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.Attribute):
                name = node.attr
            else:
                continue
            if name in names:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {name}")
    return found


def test_runtime_names_no_policy_class():
    names = {cls.__name__ for cls in POLICIES.values()}
    assert {"ArPolicy", "ChainPolicy", "Eagle3Policy", "TalonPolicy", "TalonCostPolicy"} <= names
    assert all(hasattr(talon, n) for n in names)
    assert policy_class_mentions(RUNTIME, names) == []


def test_the_scan_sees_a_mention(tmp_path):
    pkg = tmp_path / "runtime"
    pkg.mkdir()
    (pkg / "decode.py").write_text("from talon import TalonPolicy\nok = isinstance(p, talon.Eagle3Policy)\n")
    assert policy_class_mentions(pkg, {"TalonPolicy", "Eagle3Policy"}) == [
        "runtime/decode.py:1 TalonPolicy", "runtime/decode.py:2 Eagle3Policy"]
