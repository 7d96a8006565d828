"""`op-classifier champion [--set VERSION]`: which registered version is the champion; move it by hand."""

from __future__ import annotations

import argparse
from typing import Any

from op_classifier import config
from op_classifier.cli.args import version
from op_classifier.errors import OpClassifierError

ORDER = 120


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """champion [--set VERSION] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "champion", parents=[common], help="which registered version is the champion; --set VERSION moves it"
    )
    parser.add_argument("--set", metavar="VERSION", type=version, help="make this registered version the champion")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.model_name=...")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Print the champion, or move the alias and say from where."""
    from op_classifier import tracking

    cfg = config.load(args.overrides)
    store, name = tracking.open_store(cfg.tracking), cfg.tracking.model_name
    before = store.alias_version(name, config.CHAMPION)
    if args.set is not None:
        store.set_alias(name, config.CHAMPION, args.set)
        print(f"{name}@{config.CHAMPION}: version {args.set} (was {before or 'none'}) in {store.uri}")
    elif before is None:
        raise OpClassifierError(f"no {config.CHAMPION} of model {name} in {store.uri}: run `make run` first")
    else:
        print(f"{name}@{config.CHAMPION}: version {before} in {store.uri}")
