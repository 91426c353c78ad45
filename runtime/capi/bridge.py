"""Python side of the C API (talon_rt.h). Every function returns (status, payload) and never raises:
status 0 carries the result, any other status a message. The status values mirror talon_rt_status."""
import json
import traceback

from talon_rt.runtime import errors
from talon_rt.runtime.api import Generator

OK, E_ENGINE, E_OPTION, E_INPUT, E_BUFFER, E_HANDLE, E_ARG, E_BUSY, E_CANCELLED, E_INIT, E_PYTHON, E_NOMEM = range(12)

STOP_REASONS = {"eos": 1, "max_new_tokens": 2, "context_full": 3}

# talon_rt_stats fields filled from RunStats, in the order talon_rt.c reads them.
STATS_FIELDS = ("tau", "delta", "tokens_per_s", "rounds", "draft_calls", "target_calls",
                "engine_s", "host_s", "host_share")

_STATUS_OF = ((errors.EngineError, E_ENGINE), (errors.OptionError, E_OPTION),
              (errors.InputError, E_INPUT), (errors.ClosedError, E_HANDLE), (errors.BusyError, E_BUSY))


class Cancelled(Exception):
    """Raised by the C stream callback trampoline when the host's callback returns non-zero."""


def _text(exc):
    """str(exc) as valid UTF-8: a path's undecodable bytes (surrogate escapes) become \\xNN."""
    try:
        return str(exc).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:
        return str(exc).encode("utf-8", "backslashreplace").decode("utf-8")


def _failure(exc):
    """(status, message) for an exception that crossed the C boundary."""
    if isinstance(exc, Cancelled):
        return E_CANCELLED, _text(exc)
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return status, _text(exc)
    if isinstance(exc, MemoryError):
        return E_NOMEM, "out of memory (MemoryError in the runtime)"
    where = traceback.extract_tb(exc.__traceback__)
    at = f" (at {where[-1].filename}:{where[-1].lineno} in {where[-1].name})" if where else ""
    return E_PYTHON, _text(f"internal error: {type(exc).__name__}: {exc}{at}")


def _options(options_json):
    if not options_json:
        return {}
    try:
        opts = json.loads(options_json)
    except ValueError as exc:
        raise errors.OptionError(f"options_json: invalid JSON ({exc})") from None
    except RecursionError:
        raise errors.OptionError("options_json: invalid JSON: nested too deeply") from None
    if not isinstance(opts, dict):
        raise errors.OptionError(f"options_json: expected a JSON object, got {type(opts).__name__}")
    return opts


def open_generator(engine_dir, options_json):
    try:
        return OK, Generator.open(engine_dir, **_options(options_json))
    except BaseException as exc:  # the C boundary: SystemExit/KeyboardInterrupt must not end the host
        return _failure(exc)


def _summary(result):
    """(tokens, text, stop_reason code, stats tuple) of a GenerationResult."""
    stats = tuple(float(getattr(result.stats, name)) for name in STATS_FIELDS)
    return (result.tokens, getattr(result, "text", None),
            STOP_REASONS.get(result.stop_reason, 0), stats)


def generate(gen, prompt_ids, prompt_text, max_new_tokens, on_tokens):
    """prompt_ids (list[int]) or prompt_text (str); max_new_tokens 0 = the generator's default."""
    kwargs = {"on_tokens": on_tokens}
    if max_new_tokens:
        kwargs["max_new_tokens"] = max_new_tokens
    try:
        if prompt_text is not None:
            result = gen.generate_text(prompt_text, **kwargs)
        else:
            result = gen.generate(prompt_ids=prompt_ids, **kwargs)
        return OK, _summary(result)
    except BaseException as exc:  # the C boundary
        return _failure(exc)


def encode(gen, text):
    try:
        return OK, list(gen.encode(text))
    except BaseException as exc:  # the C boundary
        return _failure(exc)


def decode(gen, ids):
    try:
        return OK, gen.decode(ids)
    except BaseException as exc:  # the C boundary
        return _failure(exc)


def render_chat(gen, messages_json):
    try:
        try:
            messages = json.loads(messages_json)
        except ValueError as exc:
            raise errors.InputError(f"messages_json: invalid JSON ({exc})") from None
        except RecursionError:
            raise errors.InputError("messages_json: invalid JSON: nested too deeply") from None
        return OK, gen.render_chat(messages)
    except BaseException as exc:  # the C boundary
        return _failure(exc)


def close_generator(gen):
    try:
        gen.close()
        return OK, None
    except BaseException as exc:  # the C boundary
        return _failure(exc)
