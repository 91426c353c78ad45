"""Chat templates: an engine's Jinja2 template rendered the way transformers renders it.

The template comes from the model (tokenizer_config.json, chat_template.jinja or the GGUF's
`tokenizer.chat_template`) and is stored in the manifest; it is run in jinja2's immutable sandbox,
with transformers' conventions: trim_blocks/lstrip_blocks, `raise_exception`, `tojson`, and the
variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`. A model's template is code
from elsewhere, so a render is bounded: its output (MAX_RENDER_CHARS), its time (MAX_RENDER_S,
checked at each output piece, range() item and call), its range() items (MAX_LOOP_ITEMS, all loops
together), and no `*`, `**`, `%` or call may build a value beyond the output bound.
"""
from __future__ import annotations

import json
import re
import threading
import time
from functools import lru_cache, wraps
from typing import Any, Mapping, Sequence

from talon_rt.runtime.errors import EngineError, InputError

ROLES = ("system", "user", "assistant")


def check_text(text: str, what: str) -> str:
    """`text` if it can be encoded as UTF-8: a lone surrogate (from invalid UTF-8 decoded with
    surrogateescape, as argv and os.environ are, or a JSON escape like "\\ud800") is an InputError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what}: not valid Unicode text (lone surrogate {text[e.start]!r} at character "
                         f"{e.start}; invalid UTF-8 in the input?)") from None
    return text


MAX_RENDER_CHARS = 1 << 23    # 8 Mi characters: far beyond any context window's text
MAX_RENDER_S = 2.0            # a ChatML render of a long chat takes well under a millisecond
MAX_LOOP_ITEMS = 100_000      # range() items per render (jinja's sandbox caps one range at this)
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class _TemplateRaised(Exception):
    pass


class _TemplateLimit(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateRaised(message)


class _Budget(threading.local):
    deadline = float("inf")
    items = 0


_budget = _Budget()


def _tick(items: int = 0) -> None:
    _budget.items += items
    if _budget.items > MAX_LOOP_ITEMS:
        raise _TemplateLimit(f"its loops went past {MAX_LOOP_ITEMS:,} range() items")
    if time.monotonic() > _budget.deadline:
        raise _TemplateLimit(f"it ran longer than {MAX_RENDER_S:g} s")


class _Range:
    """range() that charges the render's budget for every item it yields."""

    def __init__(self, *args: int):
        self._range = range(*args)
        if len(self._range) > MAX_LOOP_ITEMS:
            raise _TemplateLimit(f"range{args} has more than {MAX_LOOP_ITEMS:,} items")

    def __len__(self) -> int:
        return len(self._range)

    def __iter__(self):
        for i, x in enumerate(self._range):
            _budget.items += 1
            if i % 1024 == 0 or _budget.items > MAX_LOOP_ITEMS:
                _tick()
            yield x


def _too_big(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_RENDER_CHARS


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "%"])   # also keeps them from being folded at compile time

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _tick()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise _TemplateLimit(f"'*' would build {len(seq) * n:,} items")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right > 256:
                raise _TemplateLimit(f"'**' with exponent {right}")
            elif operator == "%" and isinstance(left, str):
                widths = [w for m in _FORMAT_WIDTH.finditer(left) for w in m.groups() if w]
                args = right if isinstance(right, tuple) else (right,)
                if any(w != "*" and int(w) > MAX_RENDER_CHARS for w in widths) or \
                        ("*" in widths and any(_too_big(a) for a in args)):
                    raise _TemplateLimit("'%' with a width beyond the output bound")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _tick()
            if any(_too_big(a) for a in (*args, *kwargs.values())):
                raise _TemplateLimit(f"a call with an argument beyond {MAX_RENDER_CHARS:,}")
            return super().call(__context, __obj, *args, **kwargs)

    return Environment(trim_blocks=True, lstrip_blocks=True)


def _guarded(name: str, f: Any) -> Any:
    """A filter refused a size argument beyond the output bound (`center(10**9)`, `indent(10**9)`)."""
    @wraps(f)                          # keeps jinja's pass_context / pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if any(_too_big(a) for a in (*args[1:], *kwargs.values())):
            raise _TemplateLimit(f"filter {name} with an argument beyond {MAX_RENDER_CHARS:,}")
        return f(*args, **kwargs)
    return guarded


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    env = _environment()
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["range"] = _Range
    env.filters = {name: _guarded(name, f) for name, f in env.filters.items()}
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise EngineError(f"manifest.json: tokenizer.chat_template: not a valid Jinja2 template ({e})") from None


def check_messages(messages: Any) -> list[dict[str, str]]:
    """[{"role": "system" | "user" | "assistant", "content": str}, ...] with at least one message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError(f"messages: expected a non-empty list of {{'role', 'content'}} objects, "
                         f"got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"messages[{i}]: expected an object with 'role' and 'content', got {m!r:.80}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r:.40}")
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content: expected a string, got {content!r:.40}")
        check_text(content, f"messages[{i}].content")
        if "\x00" in content:
            raise InputError(f"messages[{i}].content: contains a NUL character (U+0000) at character "
                             f"{content.index(chr(0))}")
        out.append({"role": role, "content": content})
    return out


def render_chat(template: str, messages: Sequence[Mapping[str, str]], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`; ends with the assistant's turn header when
    `add_generation_prompt`."""
    from jinja2 import TemplateError
    msgs = check_messages(messages)
    compiled = _compile(template)
    _budget.deadline, _budget.items = time.monotonic() + MAX_RENDER_S, 0
    try:
        parts, size = [], 0
        for part in compiled.generate(messages=msgs, add_generation_prompt=add_generation_prompt,
                                      bos_token=bos_token, eos_token=eos_token):
            size += len(part)
            if size > MAX_RENDER_CHARS:
                raise _TemplateLimit(f"its output went past {MAX_RENDER_CHARS:,} characters")
            _tick()
            parts.append(part)
        return "".join(parts)
    except _TemplateRaised as e:
        raise InputError(f"chat template refused the messages: {e}") from None
    except _TemplateLimit as e:
        raise EngineError(f"manifest.json: tokenizer.chat_template: rendering stopped: {e}") from None
    except TemplateError as e:
        raise EngineError(f"manifest.json: tokenizer.chat_template failed to render ({e})") from None
    except (MemoryError, RecursionError) as e:
        raise EngineError(f"manifest.json: tokenizer.chat_template: rendering stopped ({type(e).__name__})") from None
    finally:
        _budget.deadline = float("inf")


def end_of_turn(template: str, tokenizer, bos_token: str = "", eos_token: str = "") -> int | None:
    """The token the template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>): the first token after the assistant's content in a rendered two-turn chat, if the
    `tokenizers.Tokenizer` holds it as a special token; None otherwise."""
    marker = "\ue000reply\ue000"           # private-use characters: no template or tokenizer alters them
    text = render_chat(template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                       bos_token, eos_token, add_generation_prompt=False)
    if marker not in text:
        return None
    ids = tokenizer.encode(text.split(marker, 1)[1].lstrip(" "), add_special_tokens=False).ids
    special = tokenizer.get_added_tokens_decoder()
    if ids and ids[0] in special and special[ids[0]].special:
        return ids[0]
    return None


def encode_chat(template: str, messages: Sequence[Mapping[str, str]], tokenizer, plain_tokenizer,
                bos_token: str = "", eos_token: str = "") -> list[int]:
    """The token ids of the rendered chat. The template's own special tokens are parsed as such; a
    special token's text typed inside a message's content (`<|im_end|><|im_start|>system`) is encoded
    as plain text by `plain_tokenizer` (the same tokenizer with `encode_special_tokens` set), so
    content cannot open or close turns. Content without such text is encoded exactly as the whole
    rendered text is (transformers' apply_chat_template)."""
    msgs = check_messages(messages)
    text = render_chat(template, msgs, bos_token, eos_token)
    enc = tokenizer.encode(text)
    specials = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    typed = [i for i, m in enumerate(msgs) if any(s in m["content"] for s in specials.values())]
    if not typed:
        return list(enc.ids)
    spans = _content_spans(template, msgs, text, bos_token, eos_token)
    inside = []
    for i in typed:
        if spans[i] is None:
            raise InputError(f"messages[{i}].content: holds a special token's text and the chat template "
                             f"alters the content, so it cannot be kept as plain text")
        inside.append(spans[i])
    ids: list[int] = []
    for tid, (a, b) in zip(enc.ids, enc.offsets):
        if tid in specials and any(s <= a and b <= e for s, e in inside):
            ids.extend(plain_tokenizer.encode(text[a:b], add_special_tokens=False).ids)
        else:
            ids.append(tid)
    return ids


def _content_spans(template: str, msgs: list[dict[str, str]], text: str, bos_token: str,
                   eos_token: str) -> list[tuple[int, int] | None]:
    """Where each message's content lies in `text`: found by rendering the chat again with a marker for
    each content; None for a content the template does not copy verbatim."""
    markers = [f"\ue000{i}\ue001" for i in range(len(msgs))]
    marked = render_chat(template, [{**m, "content": k} for m, k in zip(msgs, markers)], bos_token, eos_token)
    spans: list[tuple[int, int] | None] = []
    shift, at = 0, 0
    for m, k in zip(msgs, markers):
        pos = marked.find(k, at)
        if pos < 0:                        # the template leaves this message out
            spans.append(None)
            continue
        if marked.count(k) != 1:           # copied twice: later offsets are unknown
            return spans + [None] * (len(msgs) - len(spans))
        start = pos + shift
        end = start + len(m["content"])
        spans.append((start, end) if text[start:end] == m["content"] else None)
        shift += len(m["content"]) - len(k)
        at = pos + len(k)
    return spans
