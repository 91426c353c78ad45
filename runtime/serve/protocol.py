"""The OpenAI wire format: request models, responses, stream chunks and errors.

Every field of a request is either implemented or refused with a 400 naming it (tools, response_format,
echo, an unknown field, ...): none is silently ignored, except `user`, an end-user id for the caller's
own records. Talon options ride in `x_talon`; responses carry `x_talon` with the options used and the
run's stats.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, create_model

from talon_rt.runtime.errors import InputError
from talon_rt.runtime.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from talon_rt.runtime.serve.pool import Done
from talon_rt.talon.policies import KNOB_NAMES, KNOBS

# generation options a request may set in x_talon (talon_rt.runtime.options.Options)
TALON_OPTIONS = ("policy", *KNOB_NAMES, "top_k")
MAX_STOPS, MAX_STOP_CHARS = 4, 1000   # OpenAI's 4 stop strings; a length far above any real one
MAX_JSON_DEPTH = 64                  # nesting of a request body: OpenAI's requests need 5
Number = StrictFloat | StrictInt     # a JSON number, never a bool (pydantic's lax mode reads true as 1)
# top-level sampling fields, as vLLM names them (talon_rt.runtime.options.Options)
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty",
                   "presence_penalty", "seed")
FINISH = {"eos": "stop", "max_new_tokens": "length", "context_full": "length", "cancelled": "stop"}
MAX_N = 16                         # choices per request (generated one after the other)
MAX_COMPLETION_LOGPROBS = 5        # OpenAI's bound on the completions API's `logprobs`
# OpenAI fields this server does not implement: a 400 naming the field, never a silent default
REFUSED = {"tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
           "functions": "function calls are not supported", "function_call": "function calls are not supported",
           "parallel_tool_calls": "tool calls are not supported",
           "response_format": "structured output (JSON mode, JSON schema) is not supported",
           "logit_bias": "not supported", "best_of": "not supported", "suffix": "not supported",
           "audio": "not supported", "modalities": "only text is supported", "prediction": "not supported",
           "reasoning_effort": "not supported", "web_search_options": "not supported"}
# values of those fields that ask for nothing (clients send some of them by default): accepted
NO_OP = {"tool_choice": ("none",), "response_format": ({"type": "text"},), "best_of": (1,),
         "parallel_tool_calls": (True, False), "suffix": ("",)}


def _asks_nothing(name: str, value: Any) -> bool:
    return value is None or value == [] or value == {} or any(value == v for v in NO_OP.get(name, ()))


# the policy, its knobs (talon/policies.py) and top_k; None = the server's; return_tokens: the generated
# ids in the response's x_talon.tokens
XTalon = create_model("XTalon", __config__=ConfigDict(extra="forbid"), policy=(str | None, None),
                      **{k.option: ((StrictInt if k.kind is int else Number) | None, None) for k in KNOBS},
                      top_k=(StrictInt | None, None), return_tokens=(bool, False))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    frequency_penalty: Number | None = None
    presence_penalty: Number | None = None
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    n: StrictInt = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None            # the caller's end-user id: not used
    x_talon: XTalon = Field(default_factory=XTalon)

    def overrides(self) -> dict[str, Any]:
        """Options for Pool.resolve (None = the server's); a top-level top_k wins over x_talon's."""
        talon = {k: getattr(self.x_talon, k) for k in TALON_OPTIONS}
        sampling = {k: getattr(self, k) for k in SAMPLING_FIELDS}
        return {**talon, **{k: v for k, v in sampling.items() if v is not None or k not in talon}}

    def top_logprobs_k(self) -> int | None:
        """None, or each token's log-probability with this many alternatives."""
        return None

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check(self) -> None:
        if not 1 <= self.n <= MAX_N:
            raise InputError(f"field n: {self.n} outside [1, {MAX_N}]")
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
    model_config = ConfigDict(extra="forbid")
    role: Literal["developer", "system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None
    logprobs: bool = False
    top_logprobs: StrictInt | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages for the chat template; `developer` (OpenAI's newer name) is a system message."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None:
            if not self.logprobs:
                raise InputError("field top_logprobs: needs logprobs: true")
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise InputError(f"field top_logprobs: {self.top_logprobs} outside [0, {MAX_TOP_LOGPROBS}]")

    def top_logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(Request):
    prompt: Union[str, list[StrictInt], list[str]]
    logprobs: StrictInt | None = None
    echo: bool = False

    def check(self) -> None:
        super().check()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise InputError(f"field prompt: {len(self.prompt)} prompts in one request; send one")
        if self.echo:
            raise InputError("field echo: not supported by this server (the response holds the completion only)")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
            raise InputError(f"field logprobs: {self.logprobs} outside [0, {MAX_COMPLETION_LOGPROBS}]")

    def top_logprobs_k(self) -> int | None:
        return self.logprobs

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
    refused = sorted(k for k in set(raw) & set(REFUSED) if not _asks_nothing(k, raw[k]))
    if refused:
        raise InputError(f"field {refused[0]}: {REFUSED[refused[0]]} by this server")
    raw = {k: v for k, v in raw.items() if k not in REFUSED}
    try:
        req = model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise InputError(f"field {where}: unknown field, not supported by this server") from None
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
    """One response's identity and its OpenAI object shapes (chat or text completion); token_text
    spells a token id for `logprobs`."""

    def __init__(self, chat: bool, model: str, token_text: Callable[[int], str]):
        self.chat = chat
        self.model = model
        self.token_text = token_text
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.offsets: dict[int, int] = {}          # completions' text_offset so far, per choice

    def _object(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def _choice(self, index: int, text: str, finish: str | None, first: bool = False,
                logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
        lp = self.logprobs(index, logprobs) if logprobs is not None else None
        if not self.chat:
            return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else (
            {"content": text} if text or finish is None else {})
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    def logprobs(self, index: int, tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's logprobs object of a choice (chat) or of a chunk of one (completions)."""
        if self.chat:
            def entry(token: int, logprob: float) -> dict[str, Any]:
                text = self.token_text(token)
                return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
            return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top]}
                                for t in tokens], "refusal": None}
        texts = [self.token_text(t.token) for t in tokens]
        offsets, at = [], self.offsets.get(index, 0)
        for text in texts:
            offsets.append(at)
            at += len(text)
        self.offsets[index] = at
        return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{self.token_text(i): v for i, v in t.top} for t in tokens],
                "text_offset": offsets}

    def chunk(self, index: int, text: str, first: bool = False,
              logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [self._choice(index, text, None, first, logprobs)])

    def last_chunk(self, done: Done, return_tokens: bool) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [self._choice(done.index, "", finish_reason(done))],
                            x_talon=x_talon(done, return_tokens))

    def usage_chunk(self, dones: Sequence[Done]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, [], usage=usage(dones))

    def complete(self, texts: Sequence[str], dones: Sequence[Done], return_tokens: bool,
                 logprobs: bool) -> dict[str, Any]:
        """The whole response: choice i from texts[i] and dones[i]; x_talon describes choice 0."""
        choices = []
        for text, done in zip(texts, dones):
            lp = done.result.logprobs if logprobs else None
            if self.chat:
                choices.append({"index": done.index, "message": {"role": "assistant", "content": text},
                                "logprobs": self.logprobs(done.index, lp) if lp is not None else None,
                                "finish_reason": finish_reason(done)})
            else:
                choices.append(self._choice(done.index, text, finish_reason(done), logprobs=lp))
        return self._object("chat.completion" if self.chat else "text_completion", choices,
                            usage=usage(dones), x_talon=x_talon(dones[0], return_tokens))


def finish_reason(done: Done) -> str:
    return "stop" if done.stopped else FINISH[done.result.stop_reason]


def usage(dones: Sequence[Done]) -> dict[str, int]:
    prompt = dones[0].result.stats.prompt_tokens
    completion = sum(len(d.result.tokens) for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
