"""The Python facade (docs/python-api.md): what the CLI, the benchmark and the C API call."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from runtime.backends import open_backend
from runtime.chat import render_chat
from runtime.decode import Decoder
from runtime.errors import ClosedError, EngineError, InputError, OptionError
from runtime.manifest import Manifest, open_manifest
from runtime.options import SESSION_OPTIONS, Options, resolve_options
from runtime.stats import RunStats


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]          # generated ids (prompt excluded), EOS included if generated
    stop_reason: str           # "eos" | "max_new_tokens" | "context_full" | "cancelled" (on_tokens returned False)
    stats: RunStats
    text: str | None = None    # set by generate_text


class Generator:
    """An opened engine with fixed options. Not thread-safe: one generation at a time."""

    def __init__(self, manifest: Manifest, options: Options, decoder: Decoder, tokenizer: Any,
                 owns_sessions: bool = True):
        self.manifest = manifest
        self.options = options
        self._decoder: Decoder | None = decoder
        self._tokenizer = tokenizer
        self._owns_sessions = owns_sessions

    @classmethod
    def open(cls, engine_dir: str | os.PathLike[str], **options: Any) -> Generator:
        """Validate the engine directory and options, load the graphs. Raises EngineError / OptionError."""
        manifest = open_manifest(engine_dir)
        opts = resolve_options(manifest, options)
        tokenizer = _load_tokenizer(manifest)
        backend = open_backend(manifest, opts.backend, opts.threads, opts.thread_mode)
        return cls(manifest, opts, Decoder(backend, manifest, opts), tokenizer)

    @property
    def backend(self) -> str:
        return self._live().backend.name

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None) -> GenerationResult:
        decoder = self._live()
        n = self.options.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionError(f"option max_new_tokens: expected an integer >= 1, got {n!r}")
        try:
            ids = [int(t) for t in prompt_ids]
        except (TypeError, ValueError):
            raise InputError(f"prompt_ids must be a sequence of integers, got {prompt_ids!r:.80}") from None
        out = decoder.generate(ids, n, on_tokens)
        return GenerationResult(out.tokens, out.stop_reason, out.stats)

    def generate_text(self, prompt: str, max_new_tokens: int | None = None,
                      on_tokens: Callable[[list[int]], None] | None = None) -> GenerationResult:
        res = self.generate(self.encode(prompt), max_new_tokens, on_tokens)
        return replace(res, text=self.decode(res.tokens))

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text of a conversation: the engine's chat template over `messages`
        ([{"role": "system" | "user" | "assistant", "content": str}, ...]), ending with the
        assistant's turn header."""
        self._live()
        t = self.manifest.tokenizer
        if t.chat_template is None:
            raise InputError(f"{self.manifest.dir}: the engine has no chat template (manifest "
                             f"tokenizer.chat_template is null); use a text prompt")
        token = lambda i: self._tokenizer.id_to_token(i) if i is not None else ""   # noqa: E731
        return render_chat(t.chat_template, messages, token(t.bos_id),
                           token(t.eos_ids[0] if t.eos_ids else None))

    def chat(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int | None = None,
             on_tokens: Callable[[list[int]], None] | None = None) -> GenerationResult:
        """Generate the assistant's reply to `messages` (see render_chat); stops at the template's
        end-of-turn token or EOS. `.text` is the reply."""
        return self.generate_text(self.render_chat(messages), max_new_tokens, on_tokens)

    def encode(self, text: str) -> list[int]:
        self._live()
        return list(self._tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        self._live()
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)   # text for people: no </s>

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
        return Generator(self.manifest, opts, Decoder(decoder.backend, self.manifest, opts), self._tokenizer,
                         owns_sessions=False)

    def close(self) -> None:
        if self._decoder is not None:
            if self._owns_sessions:
                self._decoder.backend.close()
            self._decoder = None

    def _live(self) -> Decoder:
        if self._decoder is None:
            raise ClosedError("Generator is closed (close() was called)")
        return self._decoder

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_tokenizer(m: Manifest) -> Any:
    from tokenizers import Tokenizer
    path = m.path(m.tokenizer.file)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise EngineError(f"{path}: not a Hugging Face tokenizers file ({str(e).splitlines()[0]})") from None
    # a tokenizer larger than the model is caught per prompt (token id out of range)
    return tok
