"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback."""


class OpClassifierError(Exception):
    """A failure with a message the user can act on."""

    exit_code = 1


class ConfigError(OpClassifierError):
    """The composed config or an override is invalid."""

    exit_code = 2


class DataError(OpClassifierError):
    """The input data cannot be used."""
