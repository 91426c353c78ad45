"""The OpenAI wire format: request models, responses, stream chunks and errors.

Requests are read leniently where OpenAI clients differ (fields this server does not use are ignored)
and strictly where a value would change the output (n > 1, logprobs: refused with a named error).
Talon options ride in `x_talon`; responses carry `x_talon` with the options used and the run's stats.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from runtime.errors import InputError
from runtime.serve.pool import Done

# generation options a request may set in x_talon (runtime.options.Options)
TALON_OPTIONS = ("policy", "budget", "mu", "root_k", "eagle3_top_k", "eagle3_depth", "chain_depth", "top_k")
MAX_STOPS, MAX_STOP_CHARS = 4, 1000   # OpenAI's 4 stop strings; a length far above any real one
MAX_JSON_DEPTH = 64                  # nesting of a request body: OpenAI's requests need 5
Number = StrictFloat | StrictInt     # a JSON number, never a bool (pydantic's lax mode reads true as 1)
FINISH = {"eos": "stop", "max_new_tokens": "length", "context_full": "length", "cancelled": "stop"}


class XTalon(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str | None = None
    budget: StrictInt | None = None
    mu: Number | None = None
    root_k: StrictInt | None = None
    eagle3_top_k: StrictInt | None = None
    eagle3_depth: StrictInt | None = None
    chain_depth: StrictInt | None = None
    top_k: StrictInt | None = None
    return_tokens: bool = False        # the generated ids in the response's x_talon.tokens


class StreamOptions(BaseModel):
    include_usage: bool = False


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    n: StrictInt = 1
    logprobs: bool | int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    x_talon: XTalon = Field(default_factory=XTalon)

    def overrides(self) -> dict[str, Any]:
        """Options for Pool.resolve (None = the server's)."""
        talon = {k: getattr(self.x_talon, k) for k in TALON_OPTIONS}
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, **talon}

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check(self) -> None:
        if self.n != 1:
            raise InputError(f"field n: {self.n} choices requested; this server returns n=1")
        if self.logprobs:
            raise InputError("field logprobs: not supported by this server")
        stops = self.stops()
        if len(stops) > MAX_STOPS:
            raise InputError(f"field stop: {len(stops)} strings, at most {MAX_STOPS}")
        for i, stop in enumerate(stops):
            if len(stop) > MAX_STOP_CHARS:
                raise InputError(f"field stop[{i}]: {len(stop)} characters, at most {MAX_STOP_CHARS}")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Request):
    prompt: Union[str, list[StrictInt], list[str]]
    echo: bool = False
    suffix: str | None = None

    def check(self) -> None:
        super().check()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise InputError(f"field prompt: {len(self.prompt)} prompts in one request; send one")
        if self.echo or self.suffix:
            raise InputError("fields echo and suffix: not supported by this server")

    def prompt_value(self) -> str | list[int]:
        p = self.prompt
        return p[0] if isinstance(p, list) and p and isinstance(p[0], str) else p


def parse(body: bytes, model: type[Request]) -> Request:
    """A request model from a body; InputError names the field at fault."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise InputError(f"request body: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    if depth(raw) > MAX_JSON_DEPTH:
        raise InputError(f"request body: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(raw, dict):
        raise InputError(f"request body: expected a JSON object, got {type(raw).__name__}")
    try:
        req = model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"field {where}: {first['msg']} (got {first.get('input')!r:.80})") from None
    req.check()
    return req


def depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is not None:
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                todo.extend((x, d + 1) for x in items)
    return deepest


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class Reply:
    """One response's identity and its OpenAI object shapes (chat or text completion)."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _choice(self, text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else (
            {"content": text} if text or finish is None else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str, first: bool = False) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [self._choice(text, None, first)])

    def last_chunk(self, done: Done, return_tokens: bool) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [self._choice("", finish_reason(done))], x_talon=x_talon(done, return_tokens))

    def usage_chunk(self, done: Done) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [], usage=usage(done))

    def complete(self, text: str, done: Done, return_tokens: bool) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason(done)}
        else:
            choice = self._choice(text, finish_reason(done))
        return self._object("chat.completion" if self.chat else "text_completion", [choice],
                            usage=usage(done), x_talon=x_talon(done, return_tokens))


def finish_reason(done: Done) -> str:
    return "stop" if done.stopped else FINISH[done.result.stop_reason]


def usage(done: Done) -> dict[str, int]:
    s = done.result.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": len(done.result.tokens),
            "total_tokens": s.prompt_tokens + len(done.result.tokens)}


def x_talon(done: Done, return_tokens: bool) -> dict[str, Any]:
    s, o = done.result.stats, done.options
    out: dict[str, Any] = {
        "policy": o.policy, "budget": o.budget, "stop_reason": done.result.stop_reason,
        "instance": done.instance, "queue_s": round(done.queue_s, 6),
        "stats": {"tau": s.tau, "delta": s.delta, "tokens_per_s": s.tokens_per_s,
                  "decode_tokens_per_s": s.decode_tokens_per_s, "rounds": s.rounds, "generated": s.generated,
                  "prefill_s": s.prefill_s, "decode_s": s.decode_s}}
    if return_tokens:
        out["tokens"] = list(done.result.tokens)
    return out


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event as OpenAI streams them: `data: <json>` and a blank line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
