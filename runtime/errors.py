"""Exceptions raised by the runtime. Every message names the file, field or value at fault."""


class TalonError(Exception):
    """Base class of every error the runtime raises on purpose."""


class EngineError(TalonError):
    """The engine directory, its manifest, a checksum or a graph's I/O is wrong."""


class OptionError(TalonError):
    """A generation or session option is invalid."""


class InputError(TalonError):
    """A prompt is invalid (empty, too long, a token id out of range)."""


class ClosedError(TalonError):
    """A Generator was used after close()."""


class BusyError(TalonError):
    """A Generator was called while it runs a generation (re-entrant or concurrent use)."""
