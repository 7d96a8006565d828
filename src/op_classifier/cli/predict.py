"""`op-classifier predict PATH ...`: class probabilities of image files, folders and quoted globs."""

from __future__ import annotations

import argparse
from typing import Any

from op_classifier import defaults

ORDER = 40


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """predict PATH ... [--model M] [--threshold T] [--json] [--report HTML] [--batch-size N]"""
    parser = sub.add_parser(
        "predict", parents=[common], help="class probabilities of images: files, folders, quoted globs"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    parser.add_argument(
        "--model",
        help="model folder, or an MLflow URI such as models:/op-classifier@champion "
        "(default: paths.model of params.yaml, experiments/model)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.PREDICT_THRESHOLD,
        help="a class counts from this probability (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    parser.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report to this file")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.PREDICT_BATCH, help="images per model call (default: %(default)s)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Predict and print."""
    from op_classifier.serving import predict

    predict.run(
        args.paths,
        model=args.model,
        threshold=args.threshold,
        as_json=args.json,
        report=args.report,
        batch_size=args.batch_size,
    )
