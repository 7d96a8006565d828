"""Everything MLflow: the only module that imports it. Runs, nested trial runs, models, the registry."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import keras
import numpy as np
from mlflow.pyfunc import PythonModel  # the served wrapper's base class must exist at import

from op_classifier.config import CHAMPION, TrackingConfig
from op_classifier.errors import OpClassifierError, first_line

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# The MLflow UI reads a runs-table view (sort, columns) from this experiment tag when a link names
# its key (?viewStateShareKey=...): the link `make ui` prints opens on the columns that matter.
SHARED_VIEW_PREFIX, SHARED_VIEW_KEY = "mlflow.sharedViewState.", "op-classifier"
SHARED_VIEW = json.dumps(
    {
        "orderByKey": "metrics.`val_accuracy`",
        "orderByAsc": False,
        "searchFilter": "",
        "selectedColumns": [
            f"{kind}.`{name}`"
            for kind, name in (
                ("metrics", "val_accuracy"),
                ("metrics", "test_accuracy"),
                ("params", "model.name"),
                ("params", "learning_rate_used"),
                ("params", "tuned.units"),
                ("params", "model.units"),
                ("params", "tuned.learning_rate"),
            )
        ],
    }
)
DATA_HASH_TAG = "data_hash"  # on model versions: the prepared data their score was measured on
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


def fetch_model(model_uri: str, dst: Path) -> tuple[Path, list[str] | None]:
    """Download a logged Keras model (models:/name@alias, models:/name/N, runs:/id/path) into dst.

    Returns its .keras file and the class names its training run logged (param `classes`), if any.
    The store is MLFLOW_TRACKING_URI, else the project's sqlite:///mlflow.db.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # as in Tracker._connect: no internet here
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow

    uri = _ENV_URI or default_store()
    if missing_sqlite(uri):
        raise TrackingError(f"no MLflow store at {uri}: train a model first (`make run`) or set MLFLOW_TRACKING_URI")
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        params = client.get_run(_run_of(client, model_uri)).data.params
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(dst), tracking_uri=uri, registry_uri=uri
        )
    except TrackingError:
        raise
    except Exception as error:  # MLflow raises many types for a missing model, alias or run
        raise TrackingError(f"cannot fetch {model_uri} from {uri}: {first_line(error)}") from None
    found = sorted(Path(local).rglob("*.keras"))
    if not found:
        raise TrackingError(f"{model_uri} holds no .keras file: not a Keras model")
    # The train stage logs the classes it trained on (inferred ones too); data.classes is the config.
    classes = params.get("classes") or params.get("data.classes")
    parsed = json.loads(classes) if classes and classes.startswith("[") else None
    return found[0], parsed


def _run_of(client: Any, model_uri: str) -> str:
    """The run that logged the model a models:/ or runs:/ URI names."""
    scheme, _, rest = model_uri.partition(":/")
    rest = rest.strip("/")
    if scheme == "runs":
        return rest.split("/")[0]
    name, _, alias = rest.partition("@")
    if alias:
        return client.get_model_version_by_alias(name, alias).run_id
    name, _, version = rest.partition("/")
    if not version.isdigit():
        raise TrackingError(f"{model_uri}: use models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/<path>")
    return client.get_model_version(name, version).run_id


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
    ) -> AbstractContextManager[str | None]:
        """A run (new, continued or resumed) as a context; it yields the run's id, or None."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters of the active run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numeric metrics of the active run."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags of the active run."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file attached to the active run."""

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback logging each epoch's metrics."""

    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> AbstractContextManager[None]:
        """A nested run for one tuner trial."""

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """The served model, logged; its URI, or None."""

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """The run's input data."""

    def register(
        self, model_uri: str, score: float, target: float, metric: str, data_hash: str | None = None
    ) -> dict[str, Any]:
        """Register a logged model; whether it became the champion, and why."""


def make_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker `tracking.kind` names: mlflow, or none (records nothing)."""
    return MlflowTracker(cfg) if cfg.kind == "mlflow" else NullTracker()


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

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Nothing to tag."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Nothing to attach to."""

    def epoch_callback(self) -> keras.callbacks.Callback:
        """Keras's base callback, which does nothing."""
        return keras.callbacks.Callback()

    @contextlib.contextmanager
    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> Iterator[None]:
        """No nested run."""
        yield

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """No model logged: None."""
        return None

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """Nothing to record."""

    def register(
        self, model_uri: str, score: float, target: float, metric: str, data_hash: str | None = None
    ) -> dict[str, Any]:
        """No registry: an empty summary."""
        return {}


class MlflowTracker:
    """tracking.kind=mlflow: runs, nested trial runs, models and the registry in an MLflow store."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.experiment_id: str | None = None
        self._connect()

    def _connect(self) -> None:
        import mlflow

        # Fail in seconds, not after MLflow's default minutes of retries against a dead server.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        # Our machines have no internet; MLflow 3's usage telemetry would only time out.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = tracking_uri(self.cfg)
        _set_uri_keeping_env(uri)
        try:
            # MlflowClient() builds the store, which creates the tables of a new SQLite file.
            with _first_use_lock(uri):
                client = mlflow.MlflowClient()
                self.experiment_id, tags = _experiment(client, self.cfg.experiment, _artifact_root(uri))
                # Without the kind MLflow 3's UI opens the experiment on its GenAI overview (traces, tokens);
                # the shared view is the runs table with the columns that matter (runs_table_link).
                for key, value in (EXPERIMENT_KIND, (f"{SHARED_VIEW_PREFIX}{SHARED_VIEW_KEY}", SHARED_VIEW)):
                    if tags.get(key) != value:
                        _tag_experiment(client, self.experiment_id, key, value)
        except Exception as error:  # MLflow raises many types for a store it cannot reach
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TrackingError(
                f"MLflow store {uri} is unreachable ({first[:200]}); start it, fix tracking.uri / "
                "MLFLOW_TRACKING_URI, or run without tracking: tracking=none"
            ) from None
        # By id, never by name: concurrent clients must not race to create (or miss) it here.
        mlflow.set_experiment(experiment_id=self.experiment_id)

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
    ) -> Iterator[str | None]:
        """Start a run (logging params), or continue run_id, or resume_file's unfinished run; yield its id.

        The unfinished run is continued only when its params match `params`; otherwise it is closed as
        KILLED and a new run starts. A run that raises ends FAILED (KILLED on Ctrl-C), even when the
        store itself is what failed: then the error is the store's, in one line.
        """
        import mlflow

        resumed = None if run_id else _unfinished_run(resume_file)
        if resumed and params is not None and not _same_params(resumed, params):
            print(
                f"note: MLflow run {resumed} was logged with other params; closing it and starting a new run",
                file=sys.stderr,
                flush=True,
            )
            _store_call(lambda: mlflow.MlflowClient().set_terminated(resumed, status="KILLED"))
            resumed = None
        run_id = run_id or resumed
        if system_metrics:  # CPU, memory, disk (and GPU with pynvml) every 5 s, beside the curves
            mlflow.set_system_metrics_sampling_interval(5)
        active = _store_call(
            lambda: mlflow.start_run(
                run_id=run_id,
                # Explicit: the process-wide active experiment is not trusted across clients and threads.
                experiment_id=self.experiment_id,
                run_name=None if run_id else name,
                nested=nested,
                log_system_metrics=system_metrics or None,
            )
        )
        try:
            if resumed:
                _close_orphans(resumed)
            if resume_file is not None:
                resume_file.parent.mkdir(parents=True, exist_ok=True)
                resume_file.write_text(active.info.run_id, encoding="utf-8")
            self.set_tags(tags or {})
            self.log_params(params or {})
            yield active.info.run_id
        except BaseException as error:
            _end_active_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            raise
        _store_call(mlflow.end_run)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters to the active run (MLflow takes at most 100 per call)."""
        import mlflow

        items = [(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            _store_call(lambda chunk=dict(items[start : start + 100]): mlflow.log_params(chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics to the active run."""
        import mlflow

        clean = {_metric_key(k): float(v) for k, v in metrics.items() if _is_number(v)}
        _store_call(lambda: mlflow.log_metrics(clean, step=step))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the active run."""
        import mlflow

        _store_call(lambda: mlflow.set_tags({k: v for k, v in tags.items() if v is not None}))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file to the active run."""
        if path.exists():
            import mlflow

            _store_call(lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback logging every epoch's metrics to the active run, as `epoch_<name>` curves."""
        return _EpochLogger(self)

    @contextlib.contextmanager
    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> Iterator[None]:
        """A nested run for one tuner trial, under the active (parent) run."""
        with self.run(f"trial-{trial_id}", nested=True, tags={"trial_id": trial_id}, params=hparams):
            yield

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """Log the model as a pixel-checking pyfunc with its signature and an input example; return its URI."""
        import tempfile

        import mlflow
        from mlflow.models import infer_signature

        signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
        with tempfile.TemporaryDirectory() as tmp:
            keras_file = Path(tmp) / "model.keras"
            model.save(keras_file)
            # A LoggedModel (MLflow 3): linked to the run, listed in the runs table's Models column.
            _store_call(
                lambda: mlflow.pyfunc.log_model(
                    name="model",
                    python_model=PixelClassifier(),
                    artifacts={PixelClassifier.ARTIFACT: str(keras_file)},
                    signature=signature,
                    input_example=example,
                    pip_requirements=pip_requirements(),
                )
            )
        return f"runs:/{mlflow.active_run().info.run_id}/model"

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """Record the data as the run's input (the runs table's Dataset column): digest, split sizes."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        dataset = MetaDataset(resolve_dataset_source(str(source.resolve())), name=name, digest=digest)
        tags = {**{f"{split}_images": str(count) for split, count in sizes.items()}, "prepared_hash": prepared_hash}
        _store_call(lambda: mlflow.log_input(dataset, context="training", tags=tags))

    def register(
        self, model_uri: str, score: float, target: float, metric: str, data_hash: str | None = None
    ) -> dict[str, Any]:
        """Register the model; move the champion alias to it only if it meets target and beats it.

        Scores are compared only when both were measured on the same prepared data (same files, same
        split): a champion scored on other data keeps its alias, and the summary says why.
        """
        return _store_call(lambda: self._register(model_uri, score, target, metric, data_hash))

    def _register(
        self, model_uri: str, score: float, target: float, metric: str, data_hash: str | None
    ) -> dict[str, Any]:
        import mlflow

        client = mlflow.MlflowClient()
        version = mlflow.register_model(model_uri, self.cfg.model_name).version
        client.set_model_version_tag(self.cfg.model_name, version, metric, str(score))
        if data_hash:
            client.set_model_version_tag(self.cfg.model_name, version, DATA_HASH_TAG, data_hash)
        current = _champion(client, self.cfg.model_name)
        decision = champion_decision(score, target, data_hash, metric, current)
        if decision["champion"]:
            client.set_registered_model_alias(self.cfg.model_name, CHAMPION, version)
        return {"registered_version": int(version), **decision}


def champion_decision(
    score: float, target: float, data_hash: str | None, metric: str, current: Mapping[str, str] | None
) -> dict[str, Any]:
    """Whether a new model scoring `score` takes the alias from the current champion (its version tags)."""
    if score < target:
        return {"champion": False, "champion_reason": f"{metric} {score:.4f} is below the target {target}"}
    if current is None:
        return {"champion": True, "champion_reason": "no champion yet"}
    theirs = current.get(metric)
    if not data_hash or current.get(DATA_HASH_TAG) != data_hash or theirs is None:
        return {
            "champion": False,
            "champion_reason": (
                f"the champion was scored on other data (data hash {current.get(DATA_HASH_TAG)}, this model "
                f"{data_hash}): scores on different splits are not comparable; move the alias by hand if wanted"
            ),
        }
    if score > float(theirs):
        return {
            "champion": True,
            "champion_reason": f"{metric} {score:.4f} beats the champion's {float(theirs):.4f}",
            "previous_champion_score": float(theirs),
        }
    return {
        "champion": False,
        "champion_reason": f"{metric} {score:.4f} does not beat the champion's {float(theirs):.4f}",
        "previous_champion_score": float(theirs),
    }


class PixelClassifier(PythonModel):
    """The served model: checks (batch, S, S, 3) raw 0..255 pixels, answers per-class probabilities."""

    ARTIFACT = "keras_model"
    CHUNK = 64  # images per forward pass: a large request must not take all the memory at once

    def load_context(self, context: Any) -> None:
        """Load the Keras model (without its training metrics, which serving never needs)."""
        self.model = keras.saving.load_model(context.artifacts[self.ARTIFACT], compile=False)
        self.shape = tuple(self.model.input_shape[1:])

    # model_input stays np.ndarray, a hint MLflow derives no schema from: a type-hint schema would
    # make the server accept only `{"inputs": ...}`, not TensorFlow Serving's `{"instances": ...}`.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Per-class probabilities, (batch, classes); a bad input raises a 400-mapped MlflowException."""
        images = _checked_pixels(model_input, self.shape)
        chunks = [self.model.predict_on_batch(images[i : i + self.CHUNK]) for i in range(0, len(images), self.CHUNK)]
        return np.concatenate([np.asarray(c) for c in chunks]).astype("float32")


def _checked_pixels(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """data as float32 (batch, *shape) raw pixels, or an INVALID_PARAMETER_VALUE error saying what is wrong.

    Every message is short and quotes no data: a server sends it back to its client.
    """
    from mlflow.exceptions import MlflowException

    expected = f"(batch, {', '.join(map(str, shape))}) raw RGB pixel values 0..255"
    try:
        found = np.asarray(data)  # its own dtype first: float32 would take "7", None and True as numbers
    except (TypeError, ValueError):  # numpy refuses ragged nested lists
        raise MlflowException.invalid_parameter_value(f"instances must be a regular array: {expected}") from None
    if found.dtype == bool:
        raise MlflowException.invalid_parameter_value(f"instances contain true/false, not pixels: {expected}")
    if found.dtype.kind not in "iuf":  # strings, JSON null (object), ragged lists of lists (object)
        raise MlflowException.invalid_parameter_value(
            f"instances must be a regular array of numbers (no strings or null): {expected}"
        )
    if found.ndim != len(shape) + 1 or found.shape[1:] != shape or len(found) == 0:
        got = str(found.shape) if found.ndim <= len(shape) + 2 else f"{found.ndim} axes"
        raise MlflowException.invalid_parameter_value(f"instances have shape {got}, expected {expected}")
    images = found.astype("float32", copy=False)
    if not np.isfinite(images).all():  # JSON NaN and Infinity (Python's json reads them); huge numbers overflow
        raise MlflowException.invalid_parameter_value(f"instances contain NaN or infinite values: {expected}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise MlflowException.invalid_parameter_value(f"instances range {low:g}..{high:g}, expected {expected}")
    return images


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, tracker: MlflowTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # Prefixed as TensorBoard does: the plain names (val_accuracy) belong to the evaluated model, and
        # MLflow's runs table shows a key's highest-step value, which would otherwise be the last epoch's.
        self.tracker.log_metrics({f"epoch_{k}": v for k, v in (logs or {}).items()}, step=epoch)


def alias_version(store_uri: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points to in the registry at store_uri; None if the model or alias is missing."""
    if missing_sqlite(store_uri):
        return None  # asking would create an empty store as a side effect
    import mlflow
    from mlflow.exceptions import MlflowException

    # As in Tracker._connect: fail in seconds against a dead server, no telemetry (no internet here).
    for key, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ):
        os.environ.setdefault(key, value)
    try:
        return (
            mlflow.MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
            .get_model_version_by_alias(name, alias)
            .version
        )
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingError(f"MLflow store {store_uri} cannot be read ({first_line(error)})") from None
    except Exception as error:  # MLflow raises many types for a store it cannot reach
        raise TrackingError(f"MLflow store {store_uri} is unreachable ({first_line(error)})") from None


def runs_table_link(cfg: TrackingConfig, base_url: str) -> str:
    """The MLflow UI page comparing this project's runs (val/test accuracy, model, learning rate, units)."""
    store = tracking_uri(cfg)
    experiment = None
    if not missing_sqlite(store):
        import mlflow

        with contextlib.suppress(Exception):  # no store or no run yet: the UI's home page still helps
            experiment = mlflow.MlflowClient(store).get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return f"{base_url}/#/experiments"
    return f"{base_url}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={SHARED_VIEW_KEY}"


def _set_uri_keeping_env(uri: str) -> None:
    """Point MLflow at uri without leaving it in MLFLOW_TRACKING_URI for later runs and children."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # also exports the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


T = TypeVar("T")


def _store_call(call: Callable[[], T]) -> T:
    """Run one MLflow call; a store that fails mid-run becomes a one-line TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except TrackingError:
        raise
    except (MlflowException, OSError, ConnectionError) as error:
        raise TrackingError(f"MLflow store {_current_uri()} failed ({first_line(error)})") from None
    except Exception as error:  # requests, SQLAlchemy and others: MLflow does not wrap them all
        raise TrackingError(
            f"MLflow store {_current_uri()} failed ({type(error).__name__}: {first_line(error)})"
        ) from None


def _current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _end_active_run(status: str) -> None:
    """End the active run with status; if the store cannot be told, say so and forget the run locally."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as error:  # the store is gone: the run stays RUNNING there; resuming continues it
        print(f"note: could not mark the MLflow run {status} ({first_line(error)})", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            mlflow.tracking.fluent._active_run_stack.get().pop()


def _same_params(run_id: str, params: Mapping[str, Any]) -> bool:
    """Whether every param the run already logged equals the new value (as MLflow stores it, text)."""
    import mlflow

    logged = _store_call(lambda: mlflow.MlflowClient().get_run(run_id).data.params)
    return all(logged[key] == str(value) for key, value in params.items() if key in logged)


def _close_orphans(parent_id: str) -> None:
    """Mark KILLED the nested runs a killed process left RUNNING under a run we now resume."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    orphans = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    )
    for orphan in orphans:
        client.set_terminated(orphan.info.run_id, status="KILLED")


def _experiment(client: Any, name: str, artifact_location: str | None) -> tuple[str, dict[str, str]]:
    """The id and tags of the experiment called name, created if missing, also when others create it at once.

    Two clients may both find no experiment and both create it: the store refuses the second with
    RESOURCE_ALREADY_EXISTS, and that client takes the winner's. Never falls back to Default.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id, dict(found.tags)
    try:
        return client.create_experiment(name, artifact_location=artifact_location), {}
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = client.get_experiment_by_name(name)
    if found is None:  # created and deleted in between: someone else's doing, not ours to guess at
        raise TrackingError(f"MLflow experiment {name!r} was created by another client and is gone again")
    return found.experiment_id, dict(found.tags)


def _tag_experiment(client: Any, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag that concurrent clients may be setting to the same value at the same moment."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        # Two clients inserting the same new tag: PostgreSQL refuses the second (UniqueViolation on
        # experiment_tag_pk, measured with six clients of the server). The winner's value is ours.
        if client.get_experiment(experiment_id).tags.get(key) != value:
            raise


FIRST_USE_LOCK_TIMEOUT_S = 300


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, hold an exclusive lock (<file>.lock) while MLflow creates or migrates its schema.

    MLflow creates a new SQLite store's tables on first use without any lock: six clients starting
    on one new mlflow.db (as `dvc queue start -j 2` workers do) left one run and five failures
    ("table experiments already exists", alembic row mismatches). Other stores (a server) need none.
    """
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    try:
        lock = FileLock(f"{path}.lock", timeout=FIRST_USE_LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout:
        raise TrackingError(
            f"MLflow store {uri}: {path}.lock was held for {FIRST_USE_LOCK_TIMEOUT_S} s by another process"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _artifact_root(uri: str) -> str | None:
    """Beside a SQLite store, `mlartifacts/` (as `mlflow server` lays it out); a server decides itself."""
    path = sqlite_file(uri)
    return (path.parent / "mlartifacts").as_uri() if path is not None else None


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


def _champion(client: Any, name: str) -> dict[str, str] | None:
    """The current champion version's tags (its score and data hash), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version_by_alias(name, CHAMPION).tags)
    except MlflowException:
        return None


# The distributions a logged model needs, by Keras backend: a JAX install has no `tensorflow`.
BACKEND_REQUIREMENTS = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def pip_requirements() -> list[str]:
    """Pinned pip requirements of the logged model: Keras, numpy and the active backend's packages."""
    from importlib.metadata import PackageNotFoundError, version

    backend = keras.backend.backend()
    names = ("keras", *BACKEND_REQUIREMENTS.get(backend, ()), "numpy")
    try:
        return [f"{name}=={version(name)}" for name in names]
    except PackageNotFoundError as error:
        raise OpClassifierError(f"the {backend} backend's package {error} is not installed") from None


def _metric_key(key: str) -> str:
    return key.replace("@", "_at_")


def _is_number(value: Any) -> bool:
    try:
        return np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class ServedModel:
    """A logged pyfunc image model as `op-classifier serve` calls it: the pixels checked first.

    An op-classifier model (PixelClassifier) runs through serving_function, its Keras model traced once
    into one graph; any other pyfunc with a (batch, S, S, 3) tensor input through its own predict.
    """

    def __init__(self, model: Any, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape  # of one image, (S, S, 3)
        keras_model = _keras_model_of(model)
        self.forward = (
            serving_function(keras_model, shape, PixelClassifier.CHUNK)
            if keras_model is not None
            else lambda images: np.asarray(model.predict(images.astype(np.float32, copy=False)))
        )

    def predict(self, instances: Any) -> np.ndarray:
        """(batch, classes) probabilities of (batch, *shape) raw 0..255 pixels, nested lists or an array.

        A bad input raises DataError with _checked_pixels' short message.
        """
        from mlflow.exceptions import MlflowException

        from op_classifier.errors import DataError

        try:
            images = _checked_pixels(instances, self.shape)
        except MlflowException as error:
            raise DataError(error.message) from None
        return self.forward(images)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) probabilities of decoded uint8 (batch, *shape) images (images.decode_image's)."""
        return self.forward(images)


def _keras_model_of(model: Any) -> keras.Model | None:
    """The Keras model inside a loaded op-classifier pyfunc, or None for any other pyfunc."""
    try:
        inner = model.unwrap_python_model()
    except Exception:  # not a Python-function model (another flavor): MLflow raises its own error
        return None
    return getattr(inner, "model", None) if isinstance(inner, PixelClassifier) else None


def serving_function(model: keras.Model, shape: tuple[int, ...], chunk: int) -> Callable[[np.ndarray], np.ndarray]:
    """float32 (batch, classes) probabilities of (batch, *shape) pixels (any real dtype), chunk images a call.

    Under TensorFlow, the model traced once into a graph for any batch size (a tf.function with an input
    signature, traced here): about 0.5 ms a call less than predict_on_batch, which converts and checks
    its input on every call, and never retraced. Other backends call predict_on_batch.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        graph = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)]
        ).get_concrete_function()

        def call(x: np.ndarray) -> np.ndarray:
            return graph(tf.constant(x, tf.float32)).numpy()
    else:
        call = model.predict_on_batch

    def forward(images: np.ndarray) -> np.ndarray:
        # float32 one chunk at a time: a large batch of uint8 images never doubles as floats at once.
        parts = [
            np.asarray(call(images[i : i + chunk].astype(np.float32, copy=False))) for i in range(0, len(images), chunk)
        ]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.float32, copy=False)

    return forward


def served_model(model_uri: str, store: str) -> ServedModel:
    """The pyfunc model that model_uri (models:/, runs:/, a path) names in store, loaded to serve."""
    import tempfile

    # As in Tracker._connect: fail in seconds against a dead server, no telemetry (no internet here);
    # and no download progress bar in the server's log.
    for key, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    ):
        os.environ.setdefault(key, value)
    import mlflow

    try:
        # Downloaded with the store named, not the process-wide one. The Keras model is in memory once
        # loaded, so the files go.
        with tempfile.TemporaryDirectory(prefix="op-classifier-serve-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=store, registry_uri=store
            )
            model = mlflow.pyfunc.load_model(local)
    except Exception as error:  # MLflow raises many types for a missing or broken model
        raise TrackingError(f"cannot load {model_uri} from {store}: {first_line(error)}") from None
    schema = model.metadata.get_input_schema()
    spec = schema.inputs[0] if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1 else None
    if spec is None or len(spec.shape) != 4 or any(size <= 0 for size in spec.shape[1:]):
        raise TrackingError(f"{model_uri} does not take one (batch, S, S, 3) image tensor: not a model to serve")
    try:
        served = ServedModel(model, tuple(int(size) for size in spec.shape[1:]))
        served.forward(np.zeros((1, *served.shape), np.float32))  # the first call's one-time costs, before serving
    except Exception as error:  # a model that cannot take its own schema's input
        raise TrackingError(f"cannot run {model_uri} on its input schema: {first_line(error)}") from None
    return served
