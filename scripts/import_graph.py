"""The import graph of talon/, runtime/, export/ (and train/ where it exists): cycles and back-arrows.

    python scripts/import_graph.py [--root DIR]

Every `import` and `from ... import` counts, at module level or inside a function, class or
`if TYPE_CHECKING:` block; only imports of the project's own modules are edges. `from a.b import c`
is an edge to `a.b.c` when that is a module, else to `a.b`; a module importing another several times
is one edge (at its first import). A cycle is a strongly connected component of more than one module.

Layers, lowest first; an import goes down or sideways, never up:

    talon                                                  numpy only: imports nothing of the project
    runtime (core)                                         every runtime module not named below
    talon_rt.runtime.serve, talon_rt.runtime.triton, talon_rt.runtime.bench, talon_rt.runtime.capi
    talon_rt.runtime.commands                                       the CLI's subcommands
    talon_rt.runtime.cli                                            `talon-rt`

export/ sits beside the runtime's upper layers: it may import talon, the runtime core and itself.
train/ may import talon, the runtime core, export and itself. runtime/ never imports export/ or
train/. A `__main__` module is a program's entry point: nothing imports it, so it sits above every
layer and may import anything. An import that breaks these rules is a back-arrow ("lower layer
imports higher layer").

Prints the cycles and the back-arrows with their file and line; exits 1 when there are any.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("talon", "runtime", "export", "train")
NAMESPACE = "talon_rt"   # pyproject maps talon_rt.<package> to each folder
RUNTIME_LAYERS = {    # runtime subpackage -> layer (core runtime modules: 1; talon: 0)
    "talon_rt.runtime.serve": 2, "talon_rt.runtime.triton": 2, "talon_rt.runtime.bench": 2, "talon_rt.runtime.capi": 2,
    "talon_rt.runtime.commands": 3, "talon_rt.runtime.cli": 4,
}
SIDE_ALLOWED = {      # a package beside the runtime's upper layers -> the groups it may import
    "export": {"talon", "runtime", "export"},
    "train": {"talon", "runtime", "export", "train"},
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int


@dataclass(frozen=True)
class Report:
    modules: tuple[str, ...]
    edges: tuple[Edge, ...]
    cycles: tuple[tuple[str, ...], ...]     # each a strongly connected component, sorted
    back_arrows: tuple[Edge, ...]


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the scanned packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a project module (None: not the project's); the installed
    names `talon_rt.<package>...` are the folders' own."""
    parts = name.split(".")
    if parts[0] == NAMESPACE:
        parts = parts[1:]
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in modules:
            return prefix
    return None


def _base(module: str, path: Path, level: int, target: str | None) -> str:
    """The absolute name a relative `from <level dots><target> import` refers to."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - (level - 1)]
    return ".".join(package + ([target] if target else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The project modules `module` imports, one edge per imported module (its first import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    edges: dict[str, Edge] = {}
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                       key=lambda n: n.lineno):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node.level, node.module) if node.level else (node.module or "")
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            dst = _resolve(name, modules)
            if dst is not None and dst != module and dst not in edges:
                edges[dst] = Edge(module, dst, str(path), node.lineno)
    return list(edges.values())


def group(module: str) -> str:
    """talon | runtime (core) | runtime.<upper subpackage> | export | train."""
    for prefix in RUNTIME_LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module.split(".")[0]


def layer(g: str) -> int:
    return 0 if g == "talon" else RUNTIME_LAYERS.get(g, 1)


def is_back_arrow(src: str, dst: str) -> bool:
    if src.endswith(".__main__"):
        return False
    if dst.endswith(".__main__"):
        return True
    gs, gd = group(src), group(dst)
    if gs in SIDE_ALLOWED:
        return gd not in SIDE_ALLOWED[gs]
    if gd in SIDE_ALLOWED:      # talon and runtime never import export or train
        return True
    return layer(gd) > layer(gs)


def cycles_of(modules: list[str], edges: list[Edge]) -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    succ: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        succ[e.src].add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(tuple(sorted(comp)))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sorted(found)


def analyse(root: Path) -> Report:
    files = module_files(root)
    edges = [e for m, p in files.items() for e in imports_of(m, p, files)]
    modules = sorted(files)
    return Report(modules=tuple(modules), edges=tuple(edges), cycles=tuple(cycles_of(modules, edges)),
                  back_arrows=tuple(e for e in edges if is_back_arrow(e.src, e.dst)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: this script's repository)")
    args = ap.parse_args(argv)
    report = analyse(args.root)
    print(f"modules: {len(report.modules)}, import edges: {len(report.edges)}")
    print(f"cycles: {len(report.cycles)}")
    for comp in report.cycles:
        print("  " + " <-> ".join(comp))
    print(f"back-arrows: {len(report.back_arrows)}")
    for e in report.back_arrows:
        print(f"  {e.src} -> {e.dst}  ({Path(e.file).resolve().relative_to(args.root.resolve())}:{e.line})")
    return 1 if report.cycles or report.back_arrows else 0


if __name__ == "__main__":
    sys.exit(main())
