"""Chat templates are the model's code: a render is bounded in output, time, loop items and the size of
any value it builds, at export (the template is rendered once; a bomb fails the export) and at run time
(an engine whose manifest holds one answers a named EngineError, never gigabytes or an abort)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from talon_rt.export.tiny import CHATML
from talon_rt.runtime.chat import render_chat
from talon_rt.runtime.errors import EngineError

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
BOMBS = [
    ("{{ 'x' * 10**9 }}", "'\\*' would build 1,000,000,000 items"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
     "its loops went past 100,000 range\\(\\) items|it ran longer than 2 s"),
    ("{{ 'x'.ljust(10**9) }}", "a call with an argument beyond"),
    ("{{ 'x' | center(10**9) }}", "filter center with an argument beyond"),
    ("{{ '%0999999999d' % 1 }}", "'%' with a width beyond"),
    ("{% for i in range(3000) %}{{ 'y' * 5000 }}{% endfor %}",
     "its output went past 8,388,608 characters|it ran longer than 2 s"),
    ("{% for m in messages %}{% for i in range(900000) %}{% for c in 'abcdefgh' %}{% endfor %}{% endfor %}"
     "{% endfor %}", "range\\(900000,\\) has more than 100,000 items"),
    ("{% for i in range(99000) %}{% for c in 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ' %}"
     "{{ c | upper | lower }}{% endfor %}{% endfor %}", "it ran longer than 2 s|its output went past"),
]


@pytest.mark.parametrize("template, match", BOMBS)
def test_template_bombs_stop_with_a_named_error(template, match):
    started = time.perf_counter()
    with pytest.raises(EngineError, match="tokenizer.chat_template: rendering stopped: (" + match + ")"):
        render_chat(template, HI)
    assert time.perf_counter() - started < 10


def test_ordinary_templates_render_as_before():
    from talon_rt.runtime.chat import MAX_RENDER_CHARS
    assert render_chat(CHATML, HI) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    loops = "{% for i in range(3) %}{{ i }}{% endfor %}{{ range(5) | length }}{{ messages | tojson }}{{ 'ab' * 2 }}"
    assert render_chat(loops, HI) == '0125[{"role": "user", "content": "hi"}]abab'
    assert len(render_chat("{{ messages[0].content }}", [{"role": "user", "content": "z" * 100_000}])) == 100_000
    assert MAX_RENDER_CHARS >= 1 << 20


def test_export_refuses_a_template_bomb(tmp_path):
    from talon_rt.export.tiny import make_tiny_pair
    model_dir, draft_dir = make_tiny_pair(tmp_path / "pair", seed=8, chat=True)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    bomb = "{% if add_generation_prompt %}{{ 'x' * 10**9 }}{% endif %}" + CHATML
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": bomb}))
    r = subprocess.run([sys.executable, "-m", "talon_rt.export", "--model", str(model_dir), "--draft", str(draft_dir),
                        "--out", str(tmp_path / "eng"), "--max-seq-len", "128"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "chat template does not render" in r.stderr and "rendering stopped" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "eng").exists()


def test_run_chat_with_a_template_bomb_is_a_one_line_error(tiny_engine, tmp_path):
    from tests.helpers import edited_engine
    engine = edited_engine(tiny_engine, tmp_path / "bomb",
                           lambda m: m["tokenizer"].update(chat_template="{{ 'x' * 10**9 }}"))
    r = subprocess.run([sys.executable, "-m", "talon_rt.runtime.cli", "run", "--engine", str(engine), "--chat", "hi"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "rendering stopped: '*' would build 1,000,000,000 items" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
