"""The held-out benchmark prompts (bench/prompts/stdlib_heldout.jsonl) and the recipe step that cuts them."""
import json
from pathlib import Path

from talon_rt.train import corpus
from talon_rt.train.recipes.stdlib_pair import prompts
from talon_rt.train.recipes.stdlib_pair.recipe import PROMPTS, PromptSpec
from talon_rt.runtime.bench.datasets import load_prompts

COMMITTED = Path(__file__).resolve().parents[2] / "bench" / "prompts" / "stdlib_heldout.jsonl"

SMALL = '''import os


def short(x):
    return x
'''

DOCUMENTED = '''"""A module."""
import sys


def helper(a, b):
    total = a + b
    total *= 2
    total -= 1
    total //= 3
    return total


class Box:
    """A box."""

    def fill(self, items,
             limit=None):
        """Fill the box.

        Stops at limit.
        """
        for item in items:
            if limit is not None and len(self.items) >= limit:
                break
            self.items.append(item)
        return self
'''


def _names(split_heldout: bool, n: int) -> list[str]:
    names = (f"mod{i}.py" for i in range(10_000))
    return [name for name in names if corpus.is_heldout(name) == split_heldout][:n]


def test_committed_prompts_are_held_out_unique_and_small():
    rows = [json.loads(line) for line in COMMITTED.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in rows]
    assert 30 <= len(rows) and len(set(ids)) == len(ids)
    heldout = set(corpus.list_files()) if corpus.stdlib_root().is_dir() else None
    for r in rows:
        rel, _, name = r["id"].rpartition(":")
        assert corpus.is_heldout(rel) and name, r["id"]
        assert heldout is None or rel in heldout, r["id"]
        assert r["prompt"].strip() and len(r["prompt"]) <= PROMPTS.max_chars, r["id"]
    assert [p.id for p in load_prompts(str(COMMITTED), limit=2)] == ids[:2]


def test_step_cuts_after_the_docstring_of_held_out_files_only(tmp_path):
    root = tmp_path / "stdlib"
    (root / "test").mkdir(parents=True)
    documented, small = _names(True, 2)
    (trained,) = _names(False, 1)
    (root / documented).write_text(DOCUMENTED)
    (root / small).write_text(SMALL)                     # only a function under min_lines
    (root / trained).write_text(DOCUMENTED)              # training split: never a prompt
    (root / "test" / documented).write_text(DOCUMENTED)  # a skipped directory

    out = tmp_path / "prompts.jsonl"
    rows = prompts.write(out, root=root)

    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert [r["id"] for r in rows] == [f"{documented}:helper", f"{documented}:Box.fill"]
    helper, fill = (r["prompt"] for r in rows)
    assert helper.startswith('"""A module."""\n') and helper.endswith("def helper(a, b):\n    total = a + b\n")
    assert fill.startswith('"""A module."""\n')
    assert fill.endswith('             limit=None):\n        """Fill the box.\n\n        Stops at limit.\n        """\n')

    narrow = {r["id"]: r["prompt"] for r in prompts.build(root, PromptSpec(context_lines=1))}
    assert narrow[f"{documented}:Box.fill"].startswith("    def fill(self, items,\n")  # blank context line dropped


INPUT_REUSE = COMMITTED.parent / "input_reuse.jsonl"


def test_input_reuse_prompts_load_and_are_disjoint_from_training_and_the_other_sets():
    from talon_rt.train.recipes.head.prompts import heldout_prompts, training_prompts
    rows = load_prompts(str(INPUT_REUSE))
    assert len(rows) >= 12 and len({r.id for r in rows}) == len(rows)
    texts = [r.text for r in rows]
    train, valid = training_prompts()
    others = [p.text for p in train + valid + heldout_prompts()]
    others += [r.text for name in ("stdlib_heldout.jsonl", "chat_heldout.jsonl")
               for r in load_prompts(str(COMMITTED.parent / name))]
    for text in texts:
        first = text.split("\n", 1)[0]
        assert not any(text == o or first in o or o in text for o in others), first
    # each prompt carries the text its answer reuses: an instruction line, then a block of it
    assert all(len(t.split("\n\n", 1)[-1]) >= 150 for t in texts)
