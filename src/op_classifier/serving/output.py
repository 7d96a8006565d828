"""What predict and export put out: names shown so that they cannot forge a line, files whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from op_classifier.errors import ConfigError, OpClassifierError
from op_classifier.reports.pages import shown  # noqa: F401  (predict's import: names shown on one line)


class WriteError(OpClassifierError):
    """An output file cannot be written (a full disk, no permission); nothing of it is left."""


def check_target(path: Path, option: str) -> None:
    """ConfigError in one line when path cannot become a file: it is a folder, or lies under a file.

    Called before the work whose result it will hold: a typo fails at once, not after the predictions.
    """
    if path.is_dir():
        raise ConfigError(f"{option} {path}: a folder: name the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
            return


def write_whole(path: Path, data: bytes, option: str) -> None:
    """Write data to path whole or not at all: beside it first, then renamed over it (a reader sees the old
    file or the new one). A device or a FIFO (/dev/null, /dev/stdout) is written in place. A WriteError in
    one line when it cannot be written, its partial file removed."""
    check_target(path, option)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            path.write_bytes(data)
            return
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # never written, or not ours to remove
            partial.unlink(missing_ok=True)
        raise WriteError(f"{option} {path}: cannot write it ({error.strerror or error})") from None
