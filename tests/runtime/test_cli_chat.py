"""`talon-rt chat`: a multi-turn conversation through the chat template, driven through a pipe; Ctrl-C
stops a reply (in process: the signal handler) or ends the session at the prompt (subprocess)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from talon_rt.runtime.api import Generator

TALON_RT = Path(sys.executable).parent / "talon-rt"
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def chat_engine(tiny_engine, tmp_path_factory):
    from tests.helpers import edited_engine
    return edited_engine(tiny_engine, tmp_path_factory.mktemp("chat") / "tiny-chat",
                         lambda m: m["tokenizer"].update(chat_template=TEMPLATE))


def chat(engine, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TALON_RT), "chat", "-e", str(engine), "-n", "6", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_three_turns_keep_the_history(chat_engine):
    r = chat(chat_engine, "def fib(n):\nand then?\n/stats\nthird one\n", "-s", "Be brief.")
    assert r.returncode == 0, r.stderr
    replies = [part.rstrip("\n") for part in r.stdout.split("> ")[1:-1]]   # the last prompt met EOF
    assert len(replies) == 3 + 1   # three replies, /stats writes nothing on stdout
    with Generator.open(chat_engine) as gen:
        messages = [{"role": "system", "content": "Be brief."}]
        for user, got in zip(("def fib(n):", "and then?", "third one"), [replies[0], replies[1], replies[3]]):
            messages.append({"role": "user", "content": user})
            want = gen.chat(messages, max_new_tokens=6).text
            assert got == want
            messages.append({"role": "assistant", "content": want})
    assert "tau" in r.stderr and "conversation 5 messages" in r.stderr


def test_reset_help_and_unknown_commands(chat_engine):
    r = chat(chat_engine, "/help\nhello\n/reset\nhello\n/nope\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    replies = [p.rstrip("\n") for p in r.stdout.split("> ")[1:]]
    assert replies[1] == replies[3] != ""       # after /reset the same message gets the same first reply
    assert "/reset" in r.stderr and "/stats" in r.stderr and "/exit" in r.stderr
    assert "[conversation cleared]" in r.stderr and "unknown command /nope" in r.stderr


def test_error_in_a_turn_keeps_the_session(chat_engine):
    long = "x " * 600   # more tokens than the tiny engine's 256-row context
    r = chat(chat_engine, f"{long}\nhello\n", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("tau") == 1     # --stats: after the one reply
    assert "error: prompt of" in r.stderr and "does not fit the context" in r.stderr
    assert r.stdout.count("> ") == 3 and r.stdout.split("> ")[2].strip()   # the next turn answered


def test_engine_without_template_is_refused(tiny_engine):
    r = chat(tiny_engine, "hi\n")
    assert r.returncode == 2 and "has no chat template" in r.stderr


def test_ctrl_c_stops_the_reply_not_the_session(chat_engine):
    from talon_rt.runtime.commands.chat import ChatSession

    class InterruptingOut(io.StringIO):
        """Ctrl-C arrives while the first reply streams."""
        def write(self, s: str) -> int:
            if not self.sent:
                self.sent = True
                signal.raise_signal(signal.SIGINT)
            return super().write(s)
        sent = False

    out, err = InterruptingOut(), io.StringIO()
    with Generator.open(chat_engine, max_new_tokens=200) as gen:
        session = ChatSession(gen, None, out, err)
        session.turn("def fib(n):")     # no KeyboardInterrupt escapes
        assert session.last.stop_reason == "cancelled" and len(session.last.tokens) < 200
        assert "[stopped]" in err.getvalue()
        assert session.messages[-1]["role"] == "assistant"   # the part shown stays in the history
        out.sent = True
        session.turn("go on")
        assert session.last.stop_reason != "cancelled"
        assert len(session.messages) == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_at_the_prompt_ends_the_session(chat_engine):
    p = subprocess.Popen([str(TALON_RT), "chat", "-e", str(chat_engine)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 60
    while not seen.endswith(b"> "):
        assert time.monotonic() < deadline and p.poll() is None, seen
        seen += os.read(p.stdout.fileno(), 1)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 0
    p.stdin.close()
    p.stdout.close()
    p.stderr.close()


def test_run_reads_the_prompt_from_stdin(tiny_engine):
    a = subprocess.run([str(TALON_RT), "run", "-e", str(tiny_engine), "-f", "-", "-n", "12", "--json"],
                       input="def fib(n):", capture_output=True, text=True, timeout=60)
    b = subprocess.run([str(TALON_RT), "run", "-e", str(tiny_engine), "-p", "def fib(n):", "-n", "12", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert a.returncode == 0, a.stderr
    assert a.stdout.split('"stats"')[0] == b.stdout.split('"stats"')[0]
