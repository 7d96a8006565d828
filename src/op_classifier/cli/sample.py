"""`op-classifier sample`: render the built-in synthetic Straw Hat image set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from op_classifier import defaults
from op_classifier.runner import report

ORDER = 20


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """sample [--out DIR] [--per-class N] [--scenes N] [--seed S]"""
    parser = sub.add_parser("sample", parents=[common], help="render the built-in synthetic Straw Hat image set")
    parser.add_argument("--out", default=defaults.SAMPLE_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--per-class", type=int, help="single-character images per class (default: the built-in size)")
    parser.add_argument("--scenes", type=int, help="multi-character scenes (default: per-class / 2)")
    parser.add_argument("--seed", type=int, help="random seed (default: the one data.dvc was made with)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Render it; what was written."""
    from op_classifier.data import sample

    given = {"per_class": args.per_class, "scenes": args.scenes, "seed": args.seed}
    report(sample.generate(Path(args.out), **{k: v for k, v in given.items() if v is not None}))
