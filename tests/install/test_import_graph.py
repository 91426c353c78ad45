"""scripts/import_graph.py: the layers hold (no back-arrow; docs/design.md §1: train/ may import export/,
export/ never imports train/) and no modules import each other in a cycle (imports inside functions
counted)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "import_graph.py"


def _load():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = mod
    spec.loader.exec_module(mod)
    return mod


graph = _load()


@pytest.fixture(scope="module")
def report():
    return graph.analyse(ROOT)


def test_no_lower_layer_imports_a_higher_one(report):
    assert report.back_arrows == (), "\n".join(f"{e.src} -> {e.dst} ({e.file}:{e.line})"
                                               for e in report.back_arrows)


def test_export_never_imports_train(report):
    bad = sorted(f"{e.src} -> {e.dst}" for e in report.edges
                 if e.src.split(".")[0] == "export" and e.dst.split(".")[0] == "train")
    assert bad == [], bad


def test_no_cycles(report):
    assert report.cycles == ()


def test_the_script_prints_its_counts():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cycles: 0" in r.stdout and "back-arrows: 0" in r.stdout, r.stdout + r.stderr


def test_the_graph_sees_relative_and_in_function_imports(report):
    edges = {(e.src, e.dst) for e in report.edges}
    assert ("train.recipes.head.train", "train.recipes.head.dataset") in edges      # from .dataset import ...
    assert ("train.recipes.head.pipeline", "train.recipes.head.train") in edges     # inside run_train
    toy = [graph.Edge(a, b, "", 0) for a, b in (("a", "b"), ("b", "c"), ("c", "a"), ("d", "a"))]
    assert graph.cycles_of(["a", "b", "c", "d"], toy) == [("a", "b", "c")]


def test_layers_and_cycles_are_found(tmp_path):
    for pkg, body in {"talon": "from runtime import a\n", "runtime": "", "export": ""}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    (tmp_path / "runtime" / "a.py").write_text("def f():\n    import export.b\n")
    (tmp_path / "export" / "b.py").write_text("from . import c\n")
    (tmp_path / "export" / "c.py").write_text("from export.b import x\n")
    r = graph.analyse(tmp_path)
    assert {(e.src, e.dst) for e in r.back_arrows} == {("talon", "runtime.a"), ("runtime.a", "export.b")}
    assert r.cycles == (("export.b", "export.c"),)
