"""Chat templates: an engine's Jinja2 template rendered the way transformers renders it.

The template comes from the model (tokenizer_config.json, chat_template.jinja or the GGUF's
`tokenizer.chat_template`) and is stored in the manifest; it is run in jinja2's immutable sandbox,
with transformers' conventions: trim_blocks/lstrip_blocks, `raise_exception`, `tojson`, and the
variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Mapping, Sequence

from runtime.errors import EngineError, InputError

ROLES = ("system", "user", "assistant")


class _TemplateRaised(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateRaised(message)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
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
        out.append({"role": role, "content": content})
    return out


def render_chat(template: str, messages: Sequence[Mapping[str, str]], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`; ends with the assistant's turn header when
    `add_generation_prompt`."""
    from jinja2 import TemplateError
    msgs = check_messages(messages)
    try:
        return _compile(template).render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos_token, eos_token=eos_token)
    except _TemplateRaised as e:
        raise InputError(f"chat template refused the messages: {e}") from None
    except TemplateError as e:
        raise EngineError(f"manifest.json: tokenizer.chat_template failed to render ({e})") from None


def end_of_turn(template: str, tokenizer, bos_token: str = "", eos_token: str = "") -> int | None:
    """The token the template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>): the first token after the assistant's content in a rendered two-turn chat, if the
    `tokenizers.Tokenizer` holds it as a special token; None otherwise."""
    marker = "\x00reply\x00"
    text = render_chat(template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                       bos_token, eos_token, add_generation_prompt=False)
    if marker not in text:
        return None
    ids = tokenizer.encode(text.split(marker, 1)[1].lstrip(" "), add_special_tokens=False).ids
    special = tokenizer.get_added_tokens_decoder()
    if ids and ids[0] in special and special[ids[0]].special:
        return ids[0]
    return None
