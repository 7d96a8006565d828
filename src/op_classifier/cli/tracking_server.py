"""`op-classifier tracking-server start|stop|status`: mlflow server on PostgreSQL for a team (tracking/server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from op_classifier import defaults
from op_classifier.cli.args import count, port
from op_classifier.runner import report

ORDER = 130


def add(sub: Any, common: argparse.ArgumentParser) -> None:
    """tracking-server start|stop|status [--dir D] [--host H] [--port P] [--workers N] ..."""
    parser = sub.add_parser(
        "tracking-server",
        parents=[common],
        help="start, stop or check a team MLflow server on a PostgreSQL store of this project (.mlflow-server/)",
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--dir", default=".mlflow-server", help="its folder: database, artifacts, logs (default: %(default)s)"
    )
    parser.add_argument("--host", default=defaults.HOST, help="interface mlflow listens on (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=port,
        default=defaults.TRACKING_SERVER_PORT,
        help="mlflow's port (default: %(default)s; make ui takes the UI's)",
    )
    parser.add_argument(
        "--workers",
        type=count,
        default=defaults.TRACKING_SERVER_WORKERS,
        help="mlflow's worker processes (default: %(default)s)",
    )
    parser.add_argument("--allowed-hosts", help="Host headers mlflow accepts, e.g. mlflow.example.com,10.0.0.7:5001")
    parser.add_argument("--app-name", choices=("basic-auth",), help="basic-auth: MLflow's users and passwords")
    parser.add_argument(
        "--pg-bin", help="folder of initdb and postgres (default: PATH, then /usr/lib/postgresql/*/bin)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Start, stop or report the server; what it is now."""
    from op_classifier.tracking import server as tracking_server

    folder = Path(args.dir)
    if args.action == "start":
        pg_bin = Path(args.pg_bin) if args.pg_bin else None
        summary = tracking_server.start(
            folder, args.host, args.port, args.workers, args.allowed_hosts, args.app_name, pg_bin
        )
    elif args.action == "stop":
        summary = tracking_server.stop(folder)
    else:
        summary = tracking_server.status(folder)
    report(summary)
