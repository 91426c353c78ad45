"""The installed import names: talon_rt and its subpackages only, every package folder listed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("talon", "runtime", "export", "train")


def setuptools_table() -> tuple[dict[str, str], list[str]]:
    """pyproject.toml's [tool.setuptools] package-dir and packages (read without tomllib: Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("\n[tool.setuptools]\n", 1)[1].split("\n[", 1)[0]
    package_dir = dict(re.findall(r'"([\w.]+)" = "([\w.]+)"', re.search(r"^package-dir = \{(.*)\}$", table, re.M)[1]))
    packages = re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", table, re.M | re.S)[1])
    return package_dir, packages


def test_every_package_folder_is_installed_under_talon_rt():
    package_dir, packages = setuptools_table()
    present = [layer for layer in LAYERS if (ROOT / layer / "__init__.py").is_file()]
    assert {"talon", "runtime", "export"} <= set(present)
    want = {"talon_rt"} | {"talon_rt." + ".".join(init.parent.relative_to(ROOT).parts)
                           for layer in present for init in (ROOT / layer).rglob("__init__.py")}
    assert set(packages) == want, (sorted(set(packages) - want), sorted(want - set(packages)))
    assert package_dir == {"talon_rt": "talon_rt", **{f"talon_rt.{layer}": layer for layer in present}}
    assert all(p == "talon_rt" or p.startswith("talon_rt.") for p in packages)


def test_console_script_keeps_its_name():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^talon-rt = "talon_rt\.runtime\.cli:main"$', text, re.M)


def test_importing_talon_rt_loads_neither_onnxruntime_nor_torch():
    code = ("import sys, talon_rt; from talon_rt import Generator; "
            "print(Generator.__module__, sorted(m for m in ('torch', 'talon_rt.export') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["talon_rt.runtime.api", "[]"]


def test_outside_a_checkout_talon_rt_adds_no_folder(tmp_path):
    """Copied beside unrelated runtime/ and export/ folders (a site-packages), talon_rt does not take them."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "talon_rt", site / "talon_rt")
    for name in ("runtime", "export"):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("")
    (site / "pyproject.toml").write_text('[project]\nname = "other"\n')
    code = "import talon_rt, importlib.util as u; print(talon_rt.__path__, u.find_spec('talon_rt.runtime'))"
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=site, timeout=60,
                       env={"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"[{str(site / 'talon_rt')!r}]", "None"]
