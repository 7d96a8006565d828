"""Tracking behind two protocols: the Tracker the stages use, the ModelStore serving, predict and the CLI use.

`tracking.kind` picks the tracker (make_tracker; NullTracker records nothing); open_store gives the
model store. Everything MLflow lives in this package and nowhere else: store.py (connections,
experiments, locks), runs.py (MlflowTracker: runs, metrics, models), registry.py (the champion rule),
model_store.py (MlflowModelStore: fetch, aliases, the served model, the UI), served.py (the logged
pyfunc and how it is served), server.py and processes.py (the team server's processes). Code outside
this package imports only this module, which imports neither MLflow nor Keras: tracking=none loads neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from op_classifier.config import TrackingConfig
from op_classifier.errors import OpClassifierError

if TYPE_CHECKING:
    import keras
    import numpy as np

# The user's setting, read once: mlflow.set_tracking_uri() writes this variable too, and must not
# make one run's store the next run's in the same process.
_ENV_URI = os.environ.get("MLFLOW_TRACKING_URI")


# In a stage's state folder (paths.tuning, paths.checkpoints): the tracker's run an interrupted stage continues.
RUN_ID_FILE = "mlflow_run_id"
PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"  # evaluate's kept predictions, in its run
# A model's paired test against another's predictions file (compare.paired.judge): the promotion rule's evidence.
Judge = Callable[[Path], Mapping[str, Any]]


class TrackingError(OpClassifierError):
    """The MLflow store cannot be used."""


def project_root() -> Path:
    """The repository root: $DVC_ROOT under DVC (queued experiments run in a copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured uri, else MLflow's SQLite default at the root."""
    return _ENV_URI or cfg.uri or default_store()


SQLITE = "sqlite:///"


def default_store() -> str:
    """MLflow's own default, a SQLite file at the project root: sqlite:///<root>/mlflow.db."""
    return f"{SQLITE}{project_root() / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The file of a sqlite:/// store URI, or None for any other store."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def missing_sqlite(uri: str) -> bool:
    """A SQLite store whose file does not exist yet (asking it anything would create it)."""
    path = sqlite_file(uri)
    return path is not None and not path.is_file()


@dataclass(frozen=True)
class Registered:
    """What a models:/ URI names: a registered model, by alias or by version (the text after its `/`)."""

    name: str
    alias: str | None = None
    version: str | None = None


def registered(model_uri: str) -> Registered | None:
    """The parts of models:/<name>@<alias> or models:/<name>/<version>; None for runs:/ URIs and paths."""
    scheme, _, rest = model_uri.partition(":/")
    if scheme != "models":
        return None
    name, _, alias = rest.strip("/").partition("@")
    if alias:
        return Registered(name, alias=alias)
    name, _, version = name.partition("/")
    return Registered(name, version=version)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists are kept as their text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


RUN_NAME_MAX = 240  # MLflow stores run names up to 250 characters


def run_name(stage: str, settings: Mapping[str, Any]) -> str:
    """A run's name in the runs table: the stage and its DVC experiment's name, else its main settings."""
    described = os.environ.get("DVC_EXP_NAME") or " ".join(f"{key}={value}" for key, value in settings.items())
    name = f"{stage} {described}"
    return name if len(name) <= RUN_NAME_MAX else name[: RUN_NAME_MAX - 1] + "…"


def git_commit() -> str | None:
    """The checked-out commit, or None outside git."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root())
    return done.stdout.strip() or None if done.returncode == 0 else None


class Tracker(Protocol):
    """What a stage asks of tracking; `tracking.kind` picks the implementation (make_tracker)."""

    def run(
        self,
        name: str,
        resume_file: Path | None = None,
        nested: bool = False,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        system_metrics: bool = False,
        parent: str | None = None,
    ) -> AbstractContextManager[str | None]:
        """A run (new, continued or resumed; nested under `parent`) as a context; yields its id, or None."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters of the active run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numeric metrics of the active run."""

    def log_to(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Numeric metrics of another run, without reopening it (a finished run stays finished)."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags of the active run."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file attached to the active run."""

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback logging each epoch's metrics."""

    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> AbstractContextManager[None]:
        """A nested run for one tuner trial."""

    def join(self, param: str, value: str, timeout: float) -> AbstractContextManager[str | None]:
        """Nest this process's trials under another process's running run (its `param` is `value`)."""

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """The served model, logged; its URI, or None."""

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """The run's input data."""

    def score_model(self, model_uri: str, metrics: Mapping[str, float], dataset: Mapping[str, str] | None) -> None:
        """The evaluated metrics on the logged model itself, measured on `dataset` (name, digest, source)."""

    def register(
        self,
        model_uri: str,
        score: float,
        target: float,
        metric: str,
        data_hash: str | None = None,
        description: str | None = None,
        judge: Judge | None = None,
    ) -> dict[str, Any]:
        """Register a logged model (with a description); whether it became the champion, and why.

        `judge`: this model's paired test against the champion, given the champion's predictions file
        (tracking.promotion=significant; None: the champion metric is no split's accuracy)."""


class Served(Protocol):
    """A model loaded to serve: probabilities of raw pixel arrays or of decoded images."""

    shape: tuple[int, ...]  # of one image, (S, S, 3)

    def predict(self, instances: Any) -> np.ndarray:
        """(batch, classes) of nested lists or an array of 0..255 pixels, checked first (DataError)."""

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) of decoded uint8 images, already (batch, *shape)."""


@dataclass
class Evaluated:
    """A model's kept predictions: how to call it, the file, its evaluate run and when that started (ms)."""

    label: str
    path: Path
    run_id: str | None
    started: int


class ModelStore(Protocol):
    """What serving, predict and the CLI ask of the model registry; open_store gives the project's."""

    uri: str  # where the store is, as the user would name it (MLFLOW_TRACKING_URI's form)

    def fetch(self, model_uri: str, dst: Path) -> tuple[Path, list[str] | None]:
        """A logged model's .keras file, downloaded into dst, and the classes its run trained on."""

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `name@alias` points to; None if the model or the alias is missing."""

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `name@alias` at an existing version."""

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Tag a registered version (what was made of it: an export's file and figures)."""

    def served(self, model_uri: str, trust_code: bool = False) -> Served:
        """The model model_uri names, loaded and warmed up to serve; another's code only when trusted."""

    def evaluation(self, ref: str, model_name: str, dst: Path) -> Evaluated:
        """The kept predictions of a run id, models:/ URI, alias or version (v3) of model_name."""

    def training_evaluation(self, training_run: str, label: str, dst: Path) -> Evaluated | None:
        """The kept predictions of the evaluation under a training run, or None."""

    def attach(self, run_id: str, path: Path, artifact_path: str) -> None:
        """A file attached to a finished run, which stays as it ended."""

    def runs_link(self, experiment: str, base_url: str) -> str:
        """The UI page at base_url comparing the experiment's runs on the columns that matter."""

    def ui_command(self, host: str, port: int) -> tuple[list[str], dict[str, str]]:
        """The command line of the store's own UI on host:port, and what it adds to the environment."""


def open_store(cfg: TrackingConfig | None = None) -> ModelStore:
    """The model store: tracking_uri(cfg), or without a config MLFLOW_TRACKING_URI, else the project's."""
    from op_classifier.tracking.model_store import MlflowModelStore  # MLflow loads only when it is used

    return MlflowModelStore(tracking_uri(cfg) if cfg is not None else _ENV_URI or default_store())


def close_if_running(uri: str, run_id: str, why: str) -> bool:
    """End a run of the store at uri KILLED, saying why, if it is still RUNNING (its process was killed)."""
    from op_classifier.tracking.store import close_if_running as close  # MLflow loads only when it is used

    return close(uri, run_id, why)


def make_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker `tracking.kind` names: mlflow, or none (records nothing)."""
    if cfg.kind != "mlflow":
        return NullTracker()
    from op_classifier.tracking.runs import MlflowTracker  # MLflow loads only when it is used

    return MlflowTracker(cfg)


class NullTracker:
    """tracking.kind=none: every call does nothing, so stages never ask whether tracking is on."""

    @contextlib.contextmanager
    def run(self, name: str, *args: Any, **kwargs: Any) -> Iterator[None]:
        """No run: yields None."""
        yield None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing to log to."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Nothing to log to."""

    def log_to(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Nothing to log to."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Nothing to tag."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Nothing to attach to."""

    def epoch_callback(self) -> keras.callbacks.Callback:
        """Keras's base callback, which does nothing."""
        import keras

        return keras.callbacks.Callback()

    @contextlib.contextmanager
    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> Iterator[None]:
        """No nested run."""
        yield

    @contextlib.contextmanager
    def join(self, param: str, value: str, timeout: float) -> Iterator[str | None]:
        """No run to join: yields None."""
        yield None

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """No model logged: None."""
        return None

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """Nothing to record."""

    def score_model(self, model_uri: str, metrics: Mapping[str, float], dataset: Mapping[str, str] | None) -> None:
        """Nothing to record."""

    def register(
        self,
        model_uri: str,
        score: float,
        target: float,
        metric: str,
        data_hash: str | None = None,
        description: str | None = None,
        judge: Judge | None = None,
    ) -> dict[str, Any]:
        """No registry: an empty summary."""
        return {}


def __getattr__(name: str) -> Any:
    # Models logged before this package was split pickled their wrapper as op_classifier.tracking.
    # PixelClassifier: they must keep loading (and serving) after an upgrade.
    if name == "PixelClassifier":
        from op_classifier.tracking.served import PixelClassifier

        return PixelClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
