"""The Python facade (docs/python-api.md): what the CLI, the benchmark and the C API call."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from talon_rt.runtime.backends import open_backend
from talon_rt.runtime.chat import check_text, encode_chat, render_chat
from talon_rt.runtime.decode import Decoder, OnTokens, Sampler
from talon_rt.runtime.errors import BusyError, ClosedError, InputError, OptionError
from talon_rt.runtime.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from talon_rt.runtime.manifest import Manifest
from talon_rt.runtime.options import SAMPLING_OPTIONS, SESSION_OPTIONS, UNTIL_STOP, Options, resolve_options, validate
from talon_rt.runtime.stats import RunStats
from talon_rt.runtime.text import IncrementalText
from talon_rt.runtime.validate import validate_engine

OnText = Callable[[str], "bool | None"]           # each new piece of text; False stops the generation


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]          # generated ids (prompt excluded), EOS included if generated
    stop_reason: str           # "eos" | "max_new_tokens" | "context_full" | "cancelled" (on_tokens returned False)
    stats: RunStats
    text: str | None = None    # set by generate_text
    logprobs: list[TokenLogprob] | None = None   # one per token, when `logprobs` was given


class Generator:
    """An opened engine with fixed options. One generation at a time: a second `generate` (from the
    `on_tokens` callback or another thread) or a `close` while one runs raises BusyError."""

    def __init__(self, manifest: Manifest, options: Options, decoder: Decoder, tokenizer: Any,
                 owns_sessions: bool = True):
        self.manifest = manifest
        self.options = options
        self._decoder: Decoder | None = decoder
        self._tokenizer = tokenizer
        self._plain_tokenizer: Any = None  # the tokenizer with encode_special_tokens (encode_chat)
        self._owns_sessions = owns_sessions
        self._busy = threading.Lock()     # shared with the Generators of with_options (same sessions)

    @classmethod
    def open(cls, engine_dir: str | os.PathLike[str], **options: Any) -> Generator:
        """Validate the engine directory and options, load the graphs. Raises EngineError / OptionError."""
        manifest, tokenizer = validate_engine(engine_dir)
        opts = resolve_options(manifest, options)
        backend = open_backend(manifest, opts.backend, opts.threads, opts.thread_mode)
        try:
            decoder = Decoder(backend, manifest, opts)
        except BaseException:   # e.g. a policy footprint the TensorRT profiles cannot hold
            backend.close()
            raise
        return cls(manifest, opts, decoder, tokenizer)

    @property
    def backend(self) -> str:
        return self._live().backend.name

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int | None = None,
                 on_tokens: OnTokens | None = None, *, on_text: OnText | None = None,
                 logprobs: int | None = None, **sampling: Any) -> GenerationResult:
        """Generate from token ids. on_tokens / on_text: called with each round's new ids / new text
        (decoded incrementally: a character split across tokens comes whole); either returning False
        stops the generation. logprobs: k >= 0 fills `.logprobs` (each token's log-probability and
        its k most likely alternatives). sampling: this call's temperature, top_p, top_k, min_p,
        repetition_penalty, frequency_penalty, presence_penalty, seed (default: the Generator's)."""
        decoder = self._live()
        n = self.options.max_new_tokens if max_new_tokens is None else max_new_tokens
        if n == UNTIL_STOP and not isinstance(n, bool):   # until a stop id or a full context
            n = self.manifest.limits.max_seq_len + 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionError(f"option max_new_tokens: expected an integer >= 1 or {UNTIL_STOP}, got {n!r}")
        ids = token_ids(prompt_ids, "prompt_ids", "prompt", self.manifest.model.vocab_size)
        for name, f in (("on_tokens", on_tokens), ("on_text", on_text)):
            if f is not None and not callable(f):
                raise InputError(f"{name} must be callable or None, got {type(f).__name__}")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
            raise OptionError(f"logprobs: expected an integer in [0, {MAX_TOP_LOGPROBS}] or None, got {logprobs!r}")
        sampler = self._sampler(sampling)
        text = IncrementalText(self.decode) if on_text is not None else None

        def stream(new: list[int]) -> bool:
            keep = on_tokens is None or on_tokens(new) is not False
            if text is not None:
                piece = text.push(new)
                keep = (not piece or on_text(piece) is not False) and keep
            return keep

        with self._exclusive("generate"):
            out = decoder.generate(ids, n, stream if on_tokens is not None or on_text is not None else None,
                                   sampler, logprobs)
            rest = text.rest() if text is not None else ""
            if rest:
                on_text(rest)
        return GenerationResult(out.tokens, out.stop_reason, out.stats, logprobs=out.logprobs)

    def logprobs_so_far(self) -> list[TokenLogprob]:
        """The running generation's logprobs (generate with `logprobs`): one per token streamed so far,
        complete for the tokens on_tokens has been given. Read it, do not change it."""
        return self._live().logprobs

    def token_text(self, token: int) -> str:
        """One token id as text, special tokens spelled out (for logprobs)."""
        self._live()
        return self._tokenizer.decode([int(token)], skip_special_tokens=False)

    def _sampler(self, sampling: Mapping[str, Any]) -> Sampler | None:
        """A Sampler for this call's sampling options; None when there are none (the Decoder's own
        carries its random state from call to call)."""
        unknown = sorted(set(sampling) - set(SAMPLING_OPTIONS))
        if unknown:
            raise OptionError(f"unknown per-call option(s) {unknown}; a call may set: {', '.join(SAMPLING_OPTIONS)} "
                              f"(others: Generator.open or with_options)")
        given = {k: v for k, v in sampling.items() if v is not None}
        if not given:
            return None
        return Sampler(validate(self.manifest, replace(self.options, **given)), self.manifest.model.vocab_size)

    def generate_text(self, prompt: str, max_new_tokens: int | None = None, on_tokens: OnTokens | None = None,
                      **kwargs: Any) -> GenerationResult:
        """generate() from prompt text; `.text` is the generated text. kwargs: as generate's."""
        res = self.generate(self.encode_prompt(prompt), max_new_tokens, on_tokens, **kwargs)
        return replace(res, text=self.decode(res.tokens))

    def encode_prompt(self, text: str) -> list[int]:
        """`encode` for a prompt: empty text is an InputError (a tokenizer may still add BOS to it)."""
        if text == "":
            raise InputError("prompt is empty (need at least one character of text)")
        return self.encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text of a conversation: the engine's chat template over `messages`
        ([{"role": "system" | "user" | "assistant", "content": str}, ...]), ending with the
        assistant's turn header."""
        self._live()
        t = self.manifest.tokenizer
        if t.chat_template is None:
            raise InputError(f"{self.manifest.dir}: the engine has no chat template (manifest "
                             f"tokenizer.chat_template is null); use a text prompt")
        return render_chat(t.chat_template, messages, *self._template_tokens())

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt ids of a conversation (`render_chat`'s text, encoded). A special token's text
        typed in a message's content is encoded as plain text, so it cannot start or end a turn."""
        self.render_chat(messages)          # the checks: live, a template, well-formed messages
        if self._plain_tokenizer is None:
            from tokenizers import Tokenizer
            self._plain_tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
            self._plain_tokenizer.encode_special_tokens = True
        return encode_chat(self.manifest.tokenizer.chat_template, messages, self._tokenizer,
                           self._plain_tokenizer, *self._template_tokens())

    def _template_tokens(self) -> tuple[str, str]:
        """(bos_token, eos_token) as the chat template sees them."""
        t = self.manifest.tokenizer
        token = lambda i: self._tokenizer.id_to_token(i) if i is not None else ""   # noqa: E731
        return token(t.bos_id), token(t.eos_ids[0] if t.eos_ids else None)

    def chat(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int | None = None,
             on_tokens: OnTokens | None = None, **kwargs: Any) -> GenerationResult:
        """Generate the assistant's reply to `messages` (see encode_chat); stops at the template's
        end-of-turn token or EOS. `.text` is the reply. kwargs: as generate's."""
        res = self.generate(self.encode_chat(messages), max_new_tokens, on_tokens, **kwargs)
        return replace(res, text=self.decode(res.tokens))

    def encode(self, text: str) -> list[int]:
        self._live()
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        return list(self._tokenizer.encode(check_text(text, "text")).ids)

    def max_prompt_chars(self) -> int:
        """The most characters a prompt that fits the context can have: limits.max_seq_len tokens of
        the tokenizer's longest token (a cap for reading prompt files, not an exact bound)."""
        longest = max((len(t) for t in self._tokenizer.get_vocab(with_added_tokens=True)), default=1)
        return self.manifest.limits.max_seq_len * max(longest, 1)

    def decode(self, ids: Sequence[int]) -> str:
        self._live()
        ids = token_ids(ids, "ids", "decode", self.manifest.model.vocab_size)
        return self._tokenizer.decode(ids, skip_special_tokens=True)   # text for people: no </s>

    def with_options(self, **overrides: Any) -> Generator:
        """This engine with other generation options (policy, budget, sampling, ...) on the same sessions,
        without reloading: run one generation at a time across the two. Its close() leaves the sessions
        open; they belong to this Generator. Session options (backend, threads, thread_mode) stay."""
        decoder = self._live()
        opts = resolve_options(self.manifest, {**asdict(self.options), **overrides})
        for key in SESSION_OPTIONS:
            if getattr(opts, key) != getattr(self.options, key):
                raise OptionError(f"option {key}: fixed when the engine is opened "
                                  f"({getattr(self.options, key)!r}), got {getattr(opts, key)!r}")
        sibling = Generator(self.manifest, opts, Decoder(decoder.backend, self.manifest, opts), self._tokenizer,
                            owns_sessions=False)
        sibling._busy = self._busy
        return sibling

    def close(self) -> None:
        with self._exclusive("close"):
            if self._decoder is not None:
                if self._owns_sessions:
                    self._decoder.backend.close()
                self._decoder = None

    @contextmanager
    def _exclusive(self, call: str) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise BusyError(f"Generator.{call}: the Generator is running another generate (called from its "
                            f"on_tokens callback or from another thread); use one Generator per thread")
        try:
            yield
        finally:
            self._busy.release()

    def _live(self) -> Decoder:
        if self._decoder is None:
            raise ClosedError("Generator is closed (close() was called)")
        return self._decoder

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def token_ids(values: Any, arg: str, what: str, vocab: int) -> list[int]:
    """`values` (the argument `arg`) as a list of token ids: integers (Python or numpy, not bool) in
    [0, vocab); InputError naming the argument, or `what` ("prompt", "decode") and the index, if not."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        hint = "; use generate_text for text" if isinstance(values, str) else ""
        raise InputError(f"{arg} must be a sequence of integers (token ids), got "
                         f"{type(values).__name__} {values!r:.80}{hint}")
    ids = list(values)
    for i, t in enumerate(ids):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise InputError(f"{arg} must be a sequence of integers (token ids): {t!r:.40} at index {i} "
                             f"is a {type(t).__name__}")
        if not 0 <= t < vocab:
            raise InputError(f"{what} token id {t} at index {i} is outside the vocabulary [0, {vocab}) "
                             f"(model.vocab_size)")
    return [int(t) for t in ids]
