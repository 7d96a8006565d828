"""`op-classifier serve`: the registered champion model behind MLflow's scoring server (REST, port 8501).

It answers TensorFlow Serving's request body, `{"instances": [...]}` of shape (batch, S, S, 3) raw
0..255 pixels, with `{"predictions": [[p_class, ...], ...]}` on POST /invocations.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from op_classifier import config
from op_classifier.errors import OpClassifierError

ALIAS = "champion"
HOST = "127.0.0.1"
PORT = 8501  # TensorFlow Serving's REST port, as the original served on


class ServeError(OpClassifierError):
    """The server cannot start."""


def default_model(cfg: config.Config) -> str:
    """models:/<tracking.model_name>@champion."""
    return f"models:/{cfg.tracking.model_name}@{ALIAS}"


def check_registered(model_uri: str, store: str, cfg: config.Config) -> None:
    """Fail in one line when a models:/<name>@<alias> URI points to nothing in the store."""
    from op_classifier import tracking

    scheme, _, rest = model_uri.partition(":/")
    name, _, alias = rest.strip("/").partition("@")
    if scheme != "models" or not alias:
        return  # other URIs (versions, runs:/, paths): mlflow reports those itself
    if tracking.alias_version(store, name, alias) is not None:
        return
    if alias == ALIAS and name == cfg.tracking.model_name:
        raise ServeError(f"no {ALIAS} model registered in {store}: run `make run` first (a model becomes "
                         f"{ALIAS} when {cfg.tracking.champion_metric} >= tracking.champion_target, "
                         f"now {cfg.tracking.champion_target})")
    raise ServeError(f"no model {name}@{alias} registered in {store}")


def check_port(host: str, port: int) -> None:
    """Fail in one line when host:port cannot be listened on (taken, or not an address of this machine)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # uvicorn sets SO_REUSEADDR too: a port left in TIME_WAIT is free for it, a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        reason = "already in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        raise ServeError(f"cannot listen on {host}:{port}: {reason} (choose another with --port)") from None


def command(model_uri: str, host: str, port: int) -> list[str]:
    """The `mlflow models serve` command line, in this environment (nothing installed at serve time)."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [mlflow, "models", "serve", "-m", model_uri, "-h", host, "-p", str(port), "--env-manager", "local"]


def environment(store: str) -> dict[str, str]:
    """The server's environment: the store to resolve models:/ URIs in, this venv first on PATH."""
    bindir = str(Path(sys.executable).parent)
    # mlflow starts `uvicorn` by name: it must be this environment's, even when the venv is not active.
    return {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}


def run(model_uri: str | None = None, host: str = HOST, port: int = PORT, overrides: Sequence[str] = ()) -> NoReturn:
    """Check the model and the port, then become the MLflow scoring server (never returns)."""
    from op_classifier import tracking

    cfg = config.validate(config.compose(tuple(overrides)))
    store = tracking.tracking_uri(cfg.tracking)
    model_uri = model_uri or default_model(cfg)
    check_registered(model_uri, store, cfg)
    check_port(host, port)
    argv = command(model_uri, host, port)
    print(f"serving {model_uri} from {store} on http://{host}:{port}/invocations", flush=True)
    sys.stderr.flush()
    try:
        # exec, not a child: the TensorFlow this process imported must not sit in memory beside the server.
        os.execve(argv[0], argv, environment(store))
    except OSError as error:
        raise ServeError(f"cannot start {argv[0]}: {error.strerror or error}") from None
