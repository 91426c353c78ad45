"""Errors raised by the export package. Each message names the file, key or field at fault."""


class ExportError(Exception):
    """Base class of every error `export` raises on purpose."""


class CheckpointError(ExportError):
    """A checkpoint folder is unusable: unknown architecture, missing file, missing or misshapen tensor."""


class EngineDirError(ExportError):
    """An engine directory fails verification: missing file, checksum mismatch, bad manifest field."""
