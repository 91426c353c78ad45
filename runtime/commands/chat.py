"""`talon-rt chat`: an interactive conversation through the engine's chat template.

The engine is opened once; each user line is appended to the history, the whole conversation is
rendered with the template and the reply streams to stdout as tokens are accepted. The reply joins
the history, so the next turn sees it. Ctrl-C during a reply stops that reply (what was shown stays
in the history) and returns to the prompt; Ctrl-C at the prompt, EOF (Ctrl-D) or /exit ends the session.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Callable, TextIO

from talon_rt.runtime.commands.run import OPTION_ARGS, TextStream, add_options, format_stats
from talon_rt.runtime.errors import InputError, TalonError

PROMPT = "> "
COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation (the system message stays)",
    "/stats": "statistics of the last reply (tokens, tok/s, tau, delta)",
    "/system TEXT": "set the system message and start a new conversation",
    "/exit": "end the session (also /quit, Ctrl-D, or Ctrl-C at the prompt)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat",
                       description="Chat with an engine: each line you type is a user message, rendered with "
                                   "the engine's chat template together with the conversation so far; the reply "
                                   "streams as it is generated. Ctrl-C stops a reply; Ctrl-C at the prompt or "
                                   "Ctrl-D ends the session. Type /help for the slash commands. Options left out "
                                   "take the engine manifest's defaults.")
    p.add_argument("-e", "--engine", required=True, metavar="DIR", help="engine directory")
    p.add_argument("-s", "--system", metavar="TEXT", help="the system message (default: the template's)")
    add_options(p)
    p.add_argument("--stats", action="store_true", help="after each reply, its statistics on stderr (as /stats)")
    p.set_defaults(func=run)


class Interrupt:
    """While active, SIGINT sets `hit` instead of raising KeyboardInterrupt (a reply in progress stops
    at the end of its round: the decode loop is never left half-way)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> Interrupt:
        self.hit = False
        self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


class ChatSession:
    """The conversation with one opened Generator; `turn(text)` answers a user message."""

    def __init__(self, gen: Any, system: str | None, out: TextIO, err: TextIO, stats: bool = False):
        self.gen = gen
        self.stats = stats
        self.system = system
        self.out, self.err = out, err
        self.messages: list[dict[str, str]] = []
        self.last: Any = None       # the last reply's GenerationResult
        self.reset()

    def reset(self) -> None:
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]

    def turn(self, text: str) -> None:
        """Generate and stream the reply to `text`; a reply stopped by Ctrl-C keeps what was shown."""
        self.messages.append({"role": "user", "content": text})
        stream = TextStream(self.gen.decode, self.out)
        try:
            with Interrupt() as stop:
                prompt = self.gen.encode(self.gen.render_chat(self.messages))

                def on_tokens(new: list[int]) -> bool:
                    stream(new)
                    return not stop.hit
                res = self.gen.generate(prompt, on_tokens=on_tokens)
        except (TalonError, KeyboardInterrupt):
            # the turn did not happen (the history no longer fits the context; Ctrl-C before the handler)
            self.messages.pop()
            raise
        stream.finish()
        if res.stop_reason == "cancelled":
            self.err.write("[stopped]\n")
        elif res.stop_reason == "context_full":
            self.err.write("[the context is full: /reset to start a new conversation]\n")
        self.last = res
        self.messages.append({"role": "assistant", "content": self.gen.decode(res.tokens)})
        if self.stats:
            self.command("/stats")

    def command(self, line: str) -> bool:
        """Run a slash command; False when the session should end."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            width = max(len(c) for c in COMMANDS)
            self.err.write("".join(f"  {c:<{width}}  {h}\n" for c, h in COMMANDS.items()))
        elif name == "/reset":
            self.reset()
            self.err.write("[conversation cleared]\n")
        elif name == "/stats":
            if self.last is None:
                self.err.write("[no reply yet]\n")
            else:
                self.err.write(format_stats(self.last.stop_reason, self.last.stats.summary(), self.gen.backend)
                               + f"; conversation {len(self.messages)} messages\n")
        elif name == "/system":
            self.system = arg.strip() or None
            self.reset()
            self.err.write("[system message " + ("set" if self.system else "cleared")
                           + "; conversation cleared]\n")
        else:
            self.err.write(f"[unknown command {name}: /help lists the commands]\n")
        return True


def loop(session: ChatSession, read: Callable[[str], str]) -> int:
    """Read lines with `read(prompt)` until EOF, Ctrl-C at the prompt or /exit."""
    while True:
        try:
            line = read(PROMPT)
        except (EOFError, KeyboardInterrupt):
            session.out.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        try:
            session.turn(line)
        except TalonError as e:
            session.err.write(f"error: {e}\n")
        except KeyboardInterrupt:
            session.err.write("\n[stopped]\n")


def run(args: argparse.Namespace) -> int:
    from talon_rt.runtime.api import Generator

    options = {k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k) is not None}
    with Generator.open(args.engine, **options) as gen:
        if gen.manifest.tokenizer.chat_template is None:
            raise InputError(f"{gen.manifest.dir}: the engine has no chat template (manifest "
                             f"tokenizer.chat_template is null); use `talon-rt run --prompt`")
        if sys.stdin.isatty():
            import readline  # noqa: F401  (line editing and history for input())
            sys.stderr.write(f"talon-rt chat: {gen.manifest.name} on {gen.backend}, policy {gen.options.policy}; "
                             f"/help for commands, Ctrl-D to exit\n")
        read = input if sys.stdin.isatty() else _read_line
        return loop(ChatSession(gen, args.system, sys.stdout, sys.stderr, args.stats), read)


def _read_line(prompt: str) -> str:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line
