"""Exception types. ``CbdmError`` marks a user error: the CLI prints its message
as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class CbdmError(Exception):
    """A problem with the user's input (bad option, bad file, missing data)."""


class UnknownComponentError(CbdmError, KeyError):
    """A component name that no plugin registered (``kind``/``name`` say which)."""

    def __init__(self, message: str, kind: str = "", name: str = ""):
        super().__init__(message)
        self.kind = kind
        self.name = name

    def __str__(self) -> str:  # KeyError would add quotes
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(CbdmError):
    """Two plugins registered the same kind and name."""


class CheckpointError(CbdmError):
    """A checkpoint that is corrupt, of the wrong kind, or does not match."""


class ConfigError(CbdmError):
    """A configuration value that failed validation."""


def shorten(value: object, limit: int = 200) -> str:
    """``repr``-free text of ``value`` cut to ``limit`` characters with "…", so a hostile
    value (a 10000-character name, a 5000-entry list) cannot flood a one-line error."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
