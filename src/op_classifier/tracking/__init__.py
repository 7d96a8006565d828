"""Tracking behind two protocols: the Tracker the stages use, the ModelStore serving, predict and the CLI use.

This module is the package's face: what code outside tracking/ imports (and nothing else of the package
is imported from outside, but the team server's process manager by the CLI), and the two factories:
make_tracker (`tracking.kind` picks the tracker; NullTracker records nothing) and open_store (the model
store). It imports neither MLflow nor Keras: tracking=none loads neither.

Each job is a module of its own, and none imports this one back: protocols.py (the protocols, Evaluated,
Judge, TrackingError), uris.py (where the store is, models:/ URIs), naming.py (run names, flattened
params, the commit, the files a run keeps), null.py (NullTracker). Everything MLflow: store.py
(connections, experiments, locks), runs.py (MlflowTracker: runs, metrics, models), registry.py (the
champion rule), model_store.py (MlflowModelStore: fetch, aliases, the UI), pyfunc.py (PixelClassifier,
the logged pyfunc; logged_model.py logs it as code), forward.py (the served model's pixel checks and
forward pass), served.py (the model `serve` holds, loaded from a store), server.py and processes.py
(the team server's processes), ui_app.py (the UI's app plugin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from op_classifier.tracking.naming import PREDICTIONS_ARTIFACT, RUN_ID_FILE, flatten, git_commit, run_name
from op_classifier.tracking.null import NullTracker
from op_classifier.tracking.protocols import Evaluated, Judge, ModelStore, Served, Tracker, TrackingError
from op_classifier.tracking.uris import (
    Registered,
    default_store,
    missing_sqlite,
    project_root,
    registered,
    sqlite_file,
    tracking_uri,
)

if TYPE_CHECKING:
    from op_classifier.config import TrackingConfig

__all__ = [
    "PREDICTIONS_ARTIFACT",
    "RUN_ID_FILE",
    "Evaluated",
    "Judge",
    "ModelStore",
    "NullTracker",
    "Registered",
    "Served",
    "Tracker",
    "TrackingError",
    "close_if_running",
    "default_store",
    "flatten",
    "git_commit",
    "make_tracker",
    "missing_sqlite",
    "open_store",
    "project_root",
    "registered",
    "run_name",
    "sqlite_file",
    "tracking_uri",
]


def make_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker `tracking.kind` names: mlflow, or none (records nothing)."""
    if cfg.kind != "mlflow":
        return NullTracker()
    from op_classifier.tracking.runs import MlflowTracker  # MLflow loads only when it is used

    return MlflowTracker(cfg)


def open_store(cfg: TrackingConfig | None = None) -> ModelStore:
    """The model store: tracking_uri(cfg), or without a config MLFLOW_TRACKING_URI, else the project's."""
    from op_classifier.tracking.model_store import MlflowModelStore  # MLflow loads only when it is used

    return MlflowModelStore(tracking_uri(cfg))


def close_if_running(uri: str, run_id: str, why: str) -> bool:
    """End a run of the store at uri KILLED, saying why, if it is still RUNNING (its process was killed)."""
    from op_classifier.tracking.store import close_if_running as close  # MLflow loads only when it is used

    return close(uri, run_id, why)


def __getattr__(name: str) -> Any:
    # Models logged before this package was split pickled their wrapper as op_classifier.tracking.
    # PixelClassifier: they must keep loading (and serving) after an upgrade.
    if name == "PixelClassifier":
        from op_classifier.tracking.pyfunc import PixelClassifier

        return PixelClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
