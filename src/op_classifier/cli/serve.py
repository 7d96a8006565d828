"""`op-classifier serve`: the registered champion (or --model) over REST, TensorFlow Serving's body and MLflow's."""

from __future__ import annotations

import argparse
from typing import Any

from op_classifier import defaults
from op_classifier.cli.args import port

ORDER = 110


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """serve [--model URI] [--runtime R] [--quantize Q] [--batch-window-ms MS] [--max-batch N] [--host H]
    [--port P] [--max-body-mb MIB] [--trust-code] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "serve", parents=[common], help="serve the registered champion model over REST (TensorFlow Serving's body)"
    )
    parser.add_argument("--model", help="MLflow model URI (default: models:/<tracking.model_name>@champion)")
    parser.add_argument(
        "--runtime",
        choices=("auto", "litert", "keras"),
        default="auto",
        help="auto (default): LiteRT where a checked LiteRT file of the model exists or can be made, else Keras",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "float16", "int8"),
        default="none",
        help="the LiteRT file's quantisation (default: none, float32); others only where export's check passed",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=defaults.BATCH_WINDOW_MS,
        metavar="MS",
        help="requests arriving within MS share one model call (default: %(default)s; 0: no batching)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults.MAX_BATCH,
        metavar="N",
        help="images in one shared model call at most (default: %(default)s)",
    )
    parser.add_argument("--host", default=defaults.HOST, help="interface to listen on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=port,
        default=defaults.SERVE_PORT,
        help="port (default: %(default)s, TensorFlow Serving's REST port)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=defaults.MAX_BODY_MB,
        metavar="MIB",
        help="refuse request bodies over this many MiB with HTTP 413 (default: %(default)s, about 30 images of 180x180 as JSON)",
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="also serve a Python model that is not op-classifier's: loading it runs its code (a pickle, model code)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=http://host:5000")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Serve until stopped."""
    from op_classifier.serving import serve

    serve.run(
        args.model,
        host=args.host,
        port=args.port,
        max_body_mb=args.max_body_mb,
        overrides=args.overrides,
        trust_code=args.trust_code,
        runtime=args.runtime,
        quantize=args.quantize,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
    )
