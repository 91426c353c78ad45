"""Benchmark prompts from the held-out split of the stdlib corpus: code the stdlib pair never trained on.

Each prompt is a function (or method) of a held-out file cut right after its signature and docstring,
or after its signature and the first line of its body when it has no docstring, preceded by the lines
of the file before it, so the model continues a real body in a real context. One JSON object per line:
{"id": "<relpath>:<qualname>", "prompt": ...}; the order and the choice are fixed by the rule below.
"""
from __future__ import annotations

import ast
import io
from dataclasses import dataclass
from pathlib import Path

from talon_rt.train import corpus
from talon_rt.train.prompts import write_jsonl

from .recipe import PROMPTS, PromptSpec

DEFAULT_OUT = Path("bench/prompts/stdlib_heldout.jsonl")


@dataclass(frozen=True)
class Cut:
    qualname: str   # Class.method or function, dotted through enclosing classes and functions
    start: int      # first line of the function (its first decorator), 0-based
    cut: int        # lines [start, cut) are the head: decorators, signature, docstring


def _functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its dotted name, in source order."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return sorted(found, key=lambda nf: nf[1].lineno)


def cuts(text: str, spec: PromptSpec = PROMPTS) -> list[Cut]:
    """The functions of one file that make a prompt: at least `min_lines` long, with body left after
    the cut; `per_file` of them spread evenly over the file (for 2: at 1/4 and 3/4 of the candidates)."""
    found = []
    for name, fn in _functions(ast.parse(text)):
        start = min([fn.lineno] + [d.lineno for d in fn.decorator_list]) - 1
        first = fn.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str)
        cut = first.end_lineno if has_doc else first.lineno  # 1-based inclusive == 0-based exclusive
        if fn.end_lineno - start < spec.min_lines or cut >= fn.end_lineno or first.lineno == fn.lineno:
            continue
        found.append(Cut(name, start, cut))
    n = len(found)
    picks = sorted({(2 * k + 1) * n // (2 * spec.per_file) for k in range(min(spec.per_file, n))})
    return [found[i] for i in picks]


def prompt_text(lines: list[str], c: Cut, spec: PromptSpec = PROMPTS) -> str | None:
    """Up to `context_lines` lines before the function, then its head; context lines are dropped from
    the top while the prompt is over `max_chars`. None when the head alone is over it."""
    for ctx in range(min(spec.context_lines, c.start), -1, -1):
        text = "".join(lines[c.start - ctx:c.cut])
        if len(text) <= spec.max_chars:
            return text.lstrip("\n")
    return None


def build(root: Path | None = None, spec: PromptSpec = PROMPTS) -> list[dict[str, str]]:
    """The prompts of every held-out file under `root` (default: this interpreter's stdlib), in the
    sorted order of corpus.list_files."""
    root = root or corpus.stdlib_root()
    rows: list[dict[str, str]] = []
    for rel in corpus.list_files(root):
        if not corpus.is_heldout(rel):
            continue
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        chosen = cuts(text, spec)
        lines = io.StringIO(text, newline="").readlines()  # splits where ast counts lines, unlike splitlines
        for c in chosen:
            prompt = prompt_text(lines, c, spec)
            pid = f"{rel}:{c.qualname}"
            if prompt and pid not in {r["id"] for r in rows}:
                rows.append({"id": pid, "prompt": prompt})
    assert all(corpus.is_heldout(r["id"].rsplit(":", 1)[0]) for r in rows), "a prompt from a training file"
    return rows


def write(out: Path = DEFAULT_OUT, root: Path | None = None, spec: PromptSpec = PROMPTS) -> list[dict[str, str]]:
    rows = build(root, spec)
    write_jsonl(out, rows)
    return rows
