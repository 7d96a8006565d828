"""`op-classifier weights import FILE.pth`: a PyTorch checkpoint (no torch needed) as a Keras .weights.h5."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from op_classifier import config
from op_classifier.errors import ConfigError
from op_classifier.runner import report

ORDER = 90


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """weights import FILE.pth --model NAME --out FILE.weights.h5"""
    parser = sub.add_parser("weights", parents=[common], help="backbone weights: import a PyTorch checkpoint")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import", parents=[common], help="convert a PyTorch checkpoint (no torch needed) into a Keras .weights.h5"
    )
    imp.add_argument("file", metavar="FILE.pth", help="a state-dict checkpoint (torch.save, legacy or zip)")
    imp.add_argument("--model", required=True, help="its architecture, as a conf/model name: efficientnet_lite0|1|2")
    imp.add_argument(
        "--out", required=True, metavar="FILE.weights.h5", help="where to write (e.g. under data/weights/)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Convert the checkpoint; the file and how to use it."""
    from op_classifier.models.efficientnet_lite import backbone
    from op_classifier.weights import imagenet

    cfg = config.load((f"model={args.model}",))
    model = cfg.model
    if model.name != "efficientnet_lite":
        raise ConfigError(
            f"--model {args.model}: only EfficientNet-Lite checkpoints convert (efficientnet_lite0, 1 or 2)"
        )
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"--out {out}: a Keras weights file's name ends in .weights.h5")
    what = f"{args.model} (width {model.width:g}, depth {model.depth:g})"
    imagenet.convert(Path(args.file), lambda: backbone(32, model.width, model.depth), what, out)
    use = f"model={args.model} model.weights={out}"
    if not config.in_weights_folder(cfg.paths, out):  # the schema takes weights files from there only
        use = f"move it under {cfg.paths.weights}/ (a DVC dependency of tune and train), then model.weights=<that path>"
    report({"weights": str(out), "model": args.model, "use": use})
