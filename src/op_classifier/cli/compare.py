"""`op-classifier compare A B`: two evaluated models on the same images, paired (compare/evaluations.py)."""

from __future__ import annotations

import argparse
from typing import Any

from op_classifier import config

ORDER = 50


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """compare A B [--split val|test] [--json] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "compare", parents=[common], help="two evaluated models on the same images: paired interval, McNemar"
    )
    parser.add_argument("a", metavar="A", help="workspace, a DVC experiment, a run id, v3, champion or @alias")
    parser.add_argument("b", metavar="B", help="the same kinds as A; the table reads B - A")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="which split (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (paths, tracking.uri)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Compare and print the table (or JSON)."""
    from op_classifier.compare import evaluations

    print(evaluations.run(config.load(args.overrides), args.a, args.b, args.split, args.json))
