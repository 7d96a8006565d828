"""`op-classifier export`: a trained model as a LiteRT (.tflite) file, checked on the test split."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from op_classifier import config
from op_classifier.runner import report

ORDER = 70


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """export [--quantize Q] [--model M] [--out FILE.tflite] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "export", parents=[common], help="a trained model as a LiteRT (.tflite) file, checked on the test split"
    )
    parser.add_argument(
        "--format", choices=("litert",), default="litert", help="the file's kind (default: %(default)s)"
    )
    parser.add_argument("--quantize", choices=config.QUANTIZE, help="none, float16 or int8 (default: export.quantize)")
    parser.add_argument(
        "--model", help="a model folder or an MLflow URI (default: models:/<tracking.model_name>@champion)"
    )
    parser.add_argument("--out", metavar="FILE.tflite", help="default: <paths.export>/model-<quantize>.tflite")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. export.calibration_images=500")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Convert, check against Keras, and say how they agree."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":  # this process only: the converter is TensorFlow's, and so is the tracing
        print(f"note: export converts with TensorFlow: KERAS_BACKEND={backend} is set aside for it", file=sys.stderr)
        os.environ["KERAS_BACKEND"] = "tensorflow"
    from op_classifier.serving import export

    report(export.run(config.load(args.overrides), args.model, args.quantize, Path(args.out) if args.out else None))
