"""runtime/ reaches the draft-tree policies only through their interface (talon/policy.py `Policy`):
no module of it names a policy class, so no isinstance chain can grow there again."""
from __future__ import annotations

import ast
from pathlib import Path

from talon_rt import talon
from talon_rt.talon import POLICIES

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


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


ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "talon/policies.py"
# string constants equal to a policy's name that are not one: (file, literal) -> why
NOT_A_POLICY = {("runtime/triton/spec.py", "talon"): "the Triton model's name, the project's"}


def policy_name_literals(root: Path, tops: tuple[str, ...], names: set[str]) -> list[str]:
    """`file:line 'name'` for every string constant under root/tops that is exactly a policy name."""
    found = []
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                    found.append(f"{rel}:{node.lineno} {node.value!r}")
    return found


def test_policy_names_are_spelled_only_in_the_registry():
    """talon/, runtime/ and export/ take policy names from talon/policies.py (its constants, specs and
    knobs), so adding or renaming a policy touches its own file and the registry alone."""
    names = set(POLICIES)
    assert names == {"ar", "chain", "eagle3", "talon", "talon-cost", "lookup", "talon-lookup", "talon-gated"}
    found = policy_name_literals(ROOT, ("talon", "runtime", "export"), names)
    outside = [f for f in found if not f.startswith(REGISTRY + ":")
               and (f.split(":")[0], f.rsplit(" ", 1)[1].strip("'")) not in NOT_A_POLICY]
    assert outside == []


def test_the_literal_scan_sees_a_name(tmp_path):
    pkg = tmp_path / "runtime"
    pkg.mkdir()
    (pkg / "bench.py").write_text("POLICIES = ('ar', 'talon')\nlabel = 'talon N=16'\nok = p == \"talon-cost\"\n")
    assert policy_name_literals(tmp_path, ("runtime",), {"ar", "talon", "talon-cost"}) == [
        "runtime/bench.py:1 'ar'", "runtime/bench.py:1 'talon'", "runtime/bench.py:3 'talon-cost'"]
