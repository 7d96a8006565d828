"""Everything MLflow: the only module that imports it. Runs, nested trial runs, models, the registry."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import keras
import numpy as np

from op_classifier.config import TrackingConfig
from op_classifier.errors import OpClassifierError

CHAMPION = "champion"
# The user's setting, read once: mlflow.set_tracking_uri() writes this variable too, and must not
# make one run's store the next run's in the same process.
_ENV_URI = os.environ.get("MLFLOW_TRACKING_URI")


class TrackingError(OpClassifierError):
    """The MLflow store cannot be used."""


def project_root() -> Path:
    """The repository root: $DVC_ROOT under DVC (queued experiments run in a copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured uri, else MLflow's SQLite default at the root."""
    return _ENV_URI or cfg.uri or f"sqlite:///{project_root() / 'mlflow.db'}"


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


def git_commit() -> str | None:
    """The checked-out commit, or None outside git."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root())
    return done.stdout.strip() or None if done.returncode == 0 else None


class Tracker:
    """MLflow access for one stage. With tracking.enabled false, every method does nothing."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.experiment_id: str | None = None
        if self.enabled:
            self._connect()

    def _connect(self) -> None:
        import mlflow

        # Fail in seconds, not after MLflow's default minutes of retries against a dead server.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        # Our machines have no internet; MLflow 3's usage telemetry would only time out.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = tracking_uri(self.cfg)
        mlflow.set_tracking_uri(uri)
        try:
            client = mlflow.MlflowClient()
            found = client.get_experiment_by_name(self.cfg.experiment)
            if found is None:
                artifacts = _artifact_root(uri)
                self.experiment_id = client.create_experiment(self.cfg.experiment, artifact_location=artifacts)
            else:
                self.experiment_id = found.experiment_id
        except Exception as error:  # MLflow raises many types for a store it cannot reach
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TrackingError(
                f"MLflow store {uri} is unreachable ({first[:200]}); start it, fix tracking.uri / "
                "MLFLOW_TRACKING_URI, or set tracking.enabled=false"
            ) from None
        mlflow.set_experiment(experiment_id=self.experiment_id)

    @contextlib.contextmanager
    def run(self, name: str, resume_file: Path | None = None, nested: bool = False,
            tags: Mapping[str, Any] | None = None, run_id: str | None = None) -> Iterator[str | None]:
        """Start a run, or continue run_id, or the unfinished run resume_file names; yield its id."""
        if not self.enabled:
            yield None
            return
        import mlflow

        resumed = None if run_id else _unfinished_run(resume_file)
        run_id = run_id or resumed
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested) as active:
            if resumed:
                _close_orphans(resumed)
            if resume_file is not None:
                resume_file.parent.mkdir(parents=True, exist_ok=True)
                resume_file.write_text(active.info.run_id, encoding="utf-8")
            mlflow.set_tags({k: v for k, v in (tags or {}).items() if v is not None})
            yield active.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters to the active run (MLflow takes at most 100 per call)."""
        if not self.enabled:
            return
        import mlflow

        items = [(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics to the active run."""
        if not self.enabled:
            return
        import mlflow

        clean = {_metric_key(k): float(v) for k, v in metrics.items() if _is_number(v)}
        mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the active run."""
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: v for k, v in tags.items() if v is not None})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file to the active run."""
        if self.enabled and path.exists():
            import mlflow

            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback logging every epoch's metrics to the active run."""
        return _EpochLogger(self)

    @contextlib.contextmanager
    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> Iterator[None]:
        """A nested run for one tuner trial, under the active (parent) run."""
        with self.run(f"trial-{trial_id}", nested=True, tags={"trial_id": trial_id}):
            self.log_params(hparams)
            yield

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """Log the Keras model with its signature and an input example; return its model URI."""
        if not self.enabled:
            return None
        import tempfile

        import mlflow
        from mlflow.models import infer_signature

        signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
        # mlflow.keras.log_model fails when given an input example (mlflow issue #16183: it writes
        # the example before creating the folder), so save into a folder we made, then log that.
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "model"
            saved.mkdir()
            mlflow.keras.save_model(model, str(saved), signature=signature, input_example=example,
                                    pip_requirements=_pip_requirements())
            mlflow.log_artifacts(str(saved), artifact_path="model")
        return f"runs:/{mlflow.active_run().info.run_id}/model"

    def register(self, model_uri: str, score: float, target: float, metric: str) -> dict[str, Any]:
        """Register the model; move the champion alias to it only if it meets target and beats it."""
        if not self.enabled:
            return {}
        import mlflow

        client = mlflow.MlflowClient()
        version = mlflow.register_model(model_uri, self.cfg.model_name).version
        client.set_model_version_tag(self.cfg.model_name, version, metric, str(score))
        current = _champion_score(client, self.cfg.model_name, metric)
        promote = score >= target and (current is None or score > current)
        if promote:
            client.set_registered_model_alias(self.cfg.model_name, CHAMPION, version)
        return {"registered_version": int(version), "champion": promote, "previous_champion_score": current}


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.tracker.log_metrics(logs or {}, step=epoch)


def _close_orphans(parent_id: str) -> None:
    """Mark KILLED the nested runs a killed process left RUNNING under a run we now resume."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    orphans = client.search_runs([parent.info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    for orphan in orphans:
        client.set_terminated(orphan.info.run_id, status="KILLED")


def _artifact_root(uri: str) -> str | None:
    """Beside a SQLite store, `mlartifacts/` (as `mlflow server` lays it out); a server decides itself."""
    prefix = "sqlite:///"
    return (Path(uri[len(prefix):]).parent / "mlartifacts").as_uri() if uri.startswith(prefix) else None


def _unfinished_run(resume_file: Path | None) -> str | None:
    """The run id recorded in resume_file if that run exists and has not finished."""
    if resume_file is None or not resume_file.is_file():
        return None
    import mlflow

    run_id = resume_file.read_text(encoding="utf-8").strip()
    try:
        status = mlflow.MlflowClient().get_run(run_id).info.status
    except Exception:  # a run of another store, or deleted: start a new one
        return None
    return run_id if status != "FINISHED" else None


def _champion_score(client: Any, name: str, metric: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = champion.tags.get(metric)
    return float(value) if value is not None else None


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("keras", "tensorflow", "numpy")]


def _metric_key(key: str) -> str:
    return key.replace("@", "_at_")


def _is_number(value: Any) -> bool:
    try:
        return np.isfinite(float(value))
    except (TypeError, ValueError):
        return False
