"""`op-classifier <stage> KEY=VALUE ...`: a pipeline stage run ad hoc, with conf/ and the overrides (as DVC
runs it from params.yaml), a distributed search (`tune --workers N`), multi-process training (`train
--processes N`), or the audit's drafted corrections (`audit --suggest FOLDER`)."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from op_classifier import config
from op_classifier.cli.args import count
from op_classifier.errors import ConfigError
from op_classifier.runner import report, stop_with_parent

ORDER = 30
# Stage name -> module with `run(cfg) -> dict`; imported only when asked for (TensorFlow is slow).
STAGES = {
    "prepare": "op_classifier.stages.prepare",
    "audit": "op_classifier.stages.audit",
    "tune": "op_classifier.stages.tune",
    "train": "op_classifier.stages.train",
    "evaluate": "op_classifier.stages.evaluate",
}


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """One subcommand a stage."""
    for name in STAGES:
        stage = sub.add_parser(
            name, parents=[common], help=f"run the {name} stage with conf/ + overrides (outside DVC)"
        )
        stage.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3")
        stage.set_defaults(run=run, workers=None, processes=1, suggest=None)
    sub.choices["audit"].add_argument(
        "--suggest", metavar="FOLDER", help="draft corrections from the last audit into FOLDER"
    )
    sub.choices["tune"].add_argument(
        "--workers",
        type=count,
        metavar="N",
        help="a distributed search on this machine: a Keras Tuner chief and N workers (one GPU each)",
    )
    sub.choices["train"].add_argument(
        "--processes",
        type=count,
        default=1,
        metavar="N",
        help="data-parallel training in N local processes on JAX (train.batch_size is split across them)",
    )


def run(args: argparse.Namespace) -> None:
    """The stage, its distributed form, or the audit's drafts."""
    from op_classifier.compare.repeat import STAGE_ENV

    if os.environ.get(STAGE_ENV) == "1":  # started by repeat: stop once repeat is gone, as under dvc repro
        stop_with_parent()
    cfg = config.load(args.overrides)
    if args.suggest:
        from op_classifier.audit import corrections

        report(corrections.suggest(cfg, Path(args.suggest)))
    elif args.workers is not None:
        _distributed_search(cfg, args.workers, args.overrides)
    elif args.processes > 1:
        _data_parallel(cfg, args.command, args.overrides, args.processes, args.verbose)
    else:
        report(importlib.import_module(STAGES[args.command]).run(cfg))


def _distributed_search(cfg: config.Config, workers: int, overrides: Sequence[str]) -> None:
    from op_classifier.data.prepared import load_manifest
    from op_classifier.training import tuner_cluster

    if cfg.tuner.kind == "none":
        raise ConfigError("--workers: tuner.kind is none, there is no search to distribute")
    load_manifest(Path(cfg.paths.prepared), cfg.data.image_size)  # once here, not in every worker
    report(tuner_cluster.launch(workers, overrides))


def _data_parallel(cfg: config.Config, name: str, overrides: Sequence[str], processes: int, verbose: bool) -> None:
    os.environ["KERAS_BACKEND"] = "jax"  # the engine's backend: this launcher then loads no TensorFlow
    from op_classifier.training import distributed

    distributed.check_batch(cfg.train.batch_size, processes)
    distributed.launch(["-m", "op_classifier.cli", name, *overrides], processes, verbose=verbose)
