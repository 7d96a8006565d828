"""What code outside tracking/ asks of it: the Tracker the stages use, the ModelStore serving, predict
and the CLI use, the Served model the store loads, and the one error they raise.

Every implementation matches its protocol method for method, signature for signature
(tests/test_tracking_protocol.py): MlflowTracker and NullTracker the Tracker, MlflowModelStore the
ModelStore, ServedModel the Served. Imports neither MLflow nor Keras.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from op_classifier.errors import OpClassifierError

if TYPE_CHECKING:
    import keras
    import numpy as np

# A model's paired test against another's predictions file (compare.paired.judge): the promotion rule's evidence.
Judge = Callable[[Path], Mapping[str, Any]]


class TrackingError(OpClassifierError):
    """The MLflow store cannot be used."""


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
    runtime: str  # what runs it, as the server's first line says it ("Keras", "LiteRT float32 ...")

    def forward(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) of (batch, *shape) pixels already checked (or decoded), any real dtype."""

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

    def litert_export(self, model_uri: str, quantize: str, dst: Path) -> tuple[Path, dict[str, str]] | None:
        """The LiteRT file exported from the registered version model_uri names (downloaded into dst) and
        the version's tags; None when that version has none in that quantisation."""

    def evaluation(self, ref: str, model_name: str, dst: Path) -> Evaluated:
        """The kept predictions of a run id, models:/ URI, alias or version (v3) of model_name."""

    def training_evaluation(self, training_run: str, label: str, dst: Path) -> Evaluated | None:
        """The kept predictions of the evaluation under a training run, or None."""

    def attach(self, run_id: str, path: Path, artifact_path: str) -> None:
        """A file attached to a finished run, which stays as it ended."""

    def training_run(self, model_uri: str) -> str | None:
        """The run that logged the model a models:/ or runs:/ URI names; None for a local folder."""

    def runs_link(self, experiment: str, base_url: str, trials: bool = False) -> str:
        """The UI page at base_url of the experiment's trained models, one row each (or its search trials)."""

    def ui_command(self, host: str, port: int) -> tuple[list[str], dict[str, str]]:
        """The command line of the store's own UI on host:port, and what it adds to the environment."""
