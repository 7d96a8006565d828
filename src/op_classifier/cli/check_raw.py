"""`op-classifier check-raw`: before `dvc add`, refuse a raw folder whose links lead outside it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from op_classifier.runner import report

ORDER = 80


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """check-raw [FOLDER]"""
    parser = sub.add_parser(
        "check-raw", parents=[common], help="before `dvc add`: refuse a raw folder whose links lead outside it"
    )
    parser.add_argument("folder", nargs="?", default="data/raw", help="the raw images (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Check the links; what the folder holds."""
    from op_classifier.data import raw

    report(raw.check_links(Path(args.folder)))
