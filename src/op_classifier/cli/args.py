"""Argument types the commands share: a count, a TCP port, a registered version."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """A count of workers or processes: a whole number, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1, not {text!r}")
    return int(text)


def port(text: str) -> int:
    """A TCP port: a whole number from 1 to 65535 (a larger one was an OverflowError traceback)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, not {text!r}")
    return int(text)


def version(text: str) -> str:
    """A registered model version: a whole number, at least 1."""
    return str(count(text))
