"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback."""


class OpClassifierError(Exception):
    """A failure with a message the user can act on."""

    exit_code = 1


class ConfigError(OpClassifierError):
    """The composed config or an override is invalid."""

    exit_code = 2


class DataError(OpClassifierError):
    """The input data cannot be used."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (at most `limit` characters), else its type's name."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
