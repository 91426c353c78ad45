"""`talon-rt run`: generate from a prompt, streaming text as tokens are accepted.

Text goes to stdout as it is committed; `--stats` adds a summary on stderr; `--json` prints instead
exactly one JSON object on stdout: {"tokens", "text", "stop_reason", "stats"}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from talon_rt.runtime.chat import check_text
from talon_rt.runtime.errors import InputError
from talon_rt.runtime.options import BACKENDS, POLICIES, THREAD_MODES
from talon_rt.runtime.text import IncrementalText
from talon_rt.talon.policies import KNOB_NAMES, KNOBS, SPECS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="generate from a prompt",
                       description="Generate from a prompt with speculative decoding. Options left out "
                                   "take the engine manifest's defaults.")
    p.add_argument("-e", "--engine", required=True, metavar="DIR", help="engine directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", metavar="TEXT", help="prompt text (tokenized with the engine's tokenizer)")
    src.add_argument("-f", "--prompt-file", metavar="FILE", type=Path,
                     help="read the prompt text from FILE (UTF-8); - reads standard input")
    src.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated: 1,2,3")
    src.add_argument("--chat", metavar="TEXT", help="a user message: rendered with the engine's chat template, "
                                                    "generation stops at the end of the assistant's turn")
    p.add_argument("-s", "--system", metavar="TEXT", help="with --chat: the system message (default: the template's)")
    add_options(p)
    p.add_argument("--stats", action="store_true", help=STATS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of streaming text")
    p.set_defaults(func=run)


STATS_HELP = ("print run statistics on stderr (in the JSON with --json): tokens, tok/s, rounds, tau = generated "
              "tokens per target call (1 for ar; the higher, the more each verification yields), delta = draft "
              "calls per target call (the drafting cost), mean tree size, and host time per round. The speed-up "
              "over ar is about tau / (1 + c * delta), c = a draft call's cost relative to a target call")


def add_options(p: argparse.ArgumentParser) -> None:
    """The generation and session options (talon_rt.runtime.options.Options) as flags."""
    p.add_argument("--policy", choices=POLICIES, help="draft-tree policy: " + "; ".join(
        f"{s.name} ({s.label})" for s in SPECS.values()))
    for knob in KNOBS:
        users = ", ".join(s.name for s in SPECS.values() if knob in s.knobs)
        p.add_argument(f"--{knob.option.replace('_', '-')}", type=knob.kind, help=f"{users}: {knob.help}")
    p.add_argument("-n", "--max-new-tokens", type=int, metavar="N",
                   help="stop after N generated tokens; -1 = until the end of the turn (a stop id) or a full "
                        "context (the default of engines exported since -1 exists)")
    p.add_argument("-t", "--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-p", type=float, help="nucleus sampling on the target, (0, 1]")
    p.add_argument("--top-k", type=int, help="top-k sampling on the target, 0 = off")
    p.add_argument("--min-p", type=float, help="min-p sampling on the target: drop tokens below min_p times "
                                               "the most likely one's probability, [0, 1], 0 = off")
    p.add_argument("--repetition-penalty", type=float, help="divide the (positive) logits of tokens already in "
                                                            "the context by this, > 0, 1 = off (greedy too)")
    p.add_argument("--frequency-penalty", type=float, help="subtract this times each token's count in the "
                                                           "output from its logit, [-2, 2], 0 = off (greedy too)")
    p.add_argument("--presence-penalty", type=float, help="subtract this from the logit of every token already "
                                                          "in the output, [-2, 2], 0 = off (greedy too)")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--backend", choices=BACKENDS, help="engine backend (default auto)")
    p.add_argument("--threads", type=int, help="intra-op threads per session (0 = all cores)")
    p.add_argument("--thread-mode", choices=THREAD_MODES, help="how target and draft share the CPU")


OPTION_ARGS = ("policy", *KNOB_NAMES, "max_new_tokens", "temperature", "top_p", "top_k", "min_p",
               "repetition_penalty", "frequency_penalty", "presence_penalty", "seed", "backend", "threads",
               "thread_mode")


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(f"--prompt-ids: expected comma-separated integers, got {text!r}") from None


class TextStream:
    """Writes the decoded text of a growing token list as it grows (holds back a partial character)."""

    def __init__(self, decode: Any, out: Any):
        self.text = IncrementalText(decode)
        self.out = out

    def __call__(self, new: list[int]) -> None:
        piece = self.text.push(new)
        if piece:
            self.out.write(piece)
            self.out.flush()

    def finish(self) -> None:
        self.out.write(self.text.rest() + "\n")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    from talon_rt.runtime.api import Generator

    if args.system is not None and args.chat is None:
        raise InputError("--system needs --chat (a raw --prompt is not templated)")
    for flag in ("prompt", "chat", "system"):
        if getattr(args, flag) is not None:
            check_text(getattr(args, flag), f"--{flag}")
    options = {k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k) is not None}
    with Generator.open(args.engine, **options) as gen:
        if args.prompt_ids is not None:
            prompt = parse_ids(args.prompt_ids)
        elif args.chat is not None:
            messages = ([{"role": "system", "content": args.system}] if args.system is not None else [])
            prompt = gen.encode_chat([*messages, {"role": "user", "content": args.chat}])
        else:
            text = args.prompt if args.prompt is not None else _read(args.prompt_file, gen.max_prompt_chars())
            prompt = gen.encode_prompt(text)
        stream = None if args.json else TextStream(gen.decode, sys.stdout)
        res = gen.generate(prompt, on_tokens=stream)
        if args.json:
            stats = res.stats.to_dict() if args.stats else res.stats.summary()
            json.dump({"tokens": res.tokens, "text": gen.decode(res.tokens), "stop_reason": res.stop_reason,
                       "stats": stats}, sys.stdout)
            sys.stdout.write("\n")
            return 0
        assert stream is not None
        stream.finish()
        if args.stats:
            print(format_stats(res.stop_reason, res.stats.summary(), gen.backend), file=sys.stderr)
    return 0


def _read(path: Path, limit: int) -> str:
    """The file's text (`-`: standard input), refusing more than `limit` characters (a device like
    /dev/zero never ends)."""
    try:
        if str(path) == "-":
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
            text = stdin.read(limit + 1)
            stdin.detach()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(limit + 1)
    except OSError as e:
        raise InputError(f"--prompt-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"--prompt-file {path}: not UTF-8 text") from None
    if len(text) > limit:
        raise InputError(f"--prompt-file {path}: more than {limit} characters, longer than the context can "
                         f"hold (limits.max_seq_len tokens)")
    return text


def format_stats(stop: str, s: dict[str, Any], backend: str) -> str:
    return (f"[{s['policy']} on {backend}] {s['generated']} tokens ({stop}) in {s['prefill_s'] + s['decode_s']:.3f} s: "
            f"{s['tokens_per_s']:.1f} tok/s (decode {s['decode_tokens_per_s']:.1f} tok/s); "
            f"rounds {s['rounds']}, tau {s['tau']:.2f}, delta {s['delta']:.2f}, mean tree {s['mean_tree_size']:.1f}; "
            f"host {s['host_us_per_round']:.0f} us/round ({100 * s['host_share']:.1f} % of round time)")
