"""The `op-classifier` command: compose the config, make the sample, run a stage ad hoc, predict images.

Every command is one module of this package giving its name, its arguments (`add`) and what it does
(`run`); adding a command is adding a module. `main` parses and dispatches, an error being one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from op_classifier import quiet
from op_classifier.runner import guarded

NOT_COMMANDS = frozenset({"args", "__main__"})  # shared argument types, and `python -m`'s entry
VERBOSE_HELP = f"show TensorFlow's start-up log lines, hidden by default (DVC stages: set {quiet.VERBOSE_ENV}=1)"


def commands() -> list:  # modules: no return annotation that would need importing types
    """The command modules, in the order their ORDER says (the help lists them so)."""
    names = [info.name for info in pkgutil.iter_modules(__path__) if info.name not in NOT_COMMANDS]
    return sorted((importlib.import_module(f"{__name__}.{name}") for name in names), key=lambda module: module.ORDER)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="op-classifier", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    # Also after the command (`op-classifier predict x.jpg --verbose`); SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        command.add(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the command."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        quiet.configure(verbose=True)  # before any command loads TensorFlow
    sys.exit(guarded(lambda: args.run(args)))
