"""NullTracker: tracking.kind=none, a Tracker that records nothing (and loads neither MLflow nor Keras)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from op_classifier.tracking.protocols import Judge

if TYPE_CHECKING:
    import keras
    import numpy as np


class NullTracker:
    """tracking.kind=none: every call does nothing, so stages never ask whether tracking is on."""

    @contextlib.contextmanager
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
    ) -> Iterator[str | None]:
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
