"""`op-classifier repeat --seeds N`: the pipeline once per seed, as one experiment with its spread."""

from __future__ import annotations

import argparse
from typing import Any

from op_classifier.runner import report

ORDER = 60


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """repeat [--seeds N] [--jobs J] [--json] [KEY=VALUE ...]"""
    parser = sub.add_parser("repeat", parents=[common], help="the pipeline once per seed: mean, sd and 95%% interval")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds, from `seed` on (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print every seed's scores and times as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every seed, e.g. train.learning_rate=1e-3")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Run the seeds; the table (or JSON)."""
    from op_classifier.compare import repeat

    summary = repeat.run(args.overrides, args.seeds, args.jobs)
    if args.json:
        report(summary)
    else:
        print(repeat.table(summary))
