"""`op-classifier ui`: the MLflow UI over this project's store, after the link to its runs table."""

from __future__ import annotations

import argparse
import os
from typing import Any

from op_classifier import config, defaults
from op_classifier.cli.args import port
from op_classifier.errors import OpClassifierError

ORDER = 100


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """ui [--host H] [--port P] [KEY=VALUE ...]"""
    parser = sub.add_parser(
        "ui", parents=[common], help="the MLflow UI over this project's store; prints the link to the runs table"
    )
    parser.add_argument("--host", default=defaults.HOST, help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=port, default=defaults.UI_PORT, help="port (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=http://host:5000")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Print the link, then become MLflow's UI server."""
    from op_classifier import tracking

    cfg = config.load(args.overrides)
    store = tracking.open_store(cfg.tracking)
    base = f"http://{args.host}:{args.port}"
    runs, trials = (store.runs_link(cfg.tracking.experiment, base, trials=kind) for kind in (False, True))
    print(f"runs of {store.uri}, compared: {runs}", flush=True)
    if trials != runs:  # no experiment yet: both are the UI's list of experiments
        print(f"the search's trials: {trials}", flush=True)
    argv, extra = store.ui_command(args.host, args.port)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"), **extra}
    try:
        os.execve(argv[0], argv, env)  # the UI is MLflow's own server: nothing of ours stays in between
    except OSError as error:
        raise OpClassifierError(f"cannot start {argv[0]}: {error.strerror or error}") from None
