"""The MLflow store: client settings, experiments, the first-use lock, calls that fail in one line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from op_classifier.errors import first_line
from op_classifier.tracking.protocols import TrackingError
from op_classifier.tracking.uris import sqlite_file

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Our marks on a run: whether a later stage may continue it (set when a stage starts it with a resume
# file, cleared when it fails or is closed unfinished), and why it was closed without finishing.
RESUMABLE_TAG, CLOSED_TAG = "op_classifier.resumable", "op_classifier.closed"

# The MLflow UI reads a runs-table view (filter, sort, columns) from an experiment tag when a link names
# its key (?viewStateShareKey=...). Its table nests child runs only when neither sorted nor filtered, so
# the views filter instead: one row per trained model (its evaluate and export runs are its children),
# and the search's trials, all in the val_accuracy column.
SHARED_VIEW_PREFIX, SHARED_VIEW_KEY, TRIALS_VIEW_KEY = (
    "mlflow.sharedViewState.",
    "op-classifier",
    "op-classifier-trials",
)


def _view(stage: str, columns: tuple[tuple[str, str], ...]) -> str:
    """A runs-table view of one stage's runs, best val_accuracy first, with these columns."""
    selected = [f"{kind}.`{name}`" for kind, name in (("metrics", "val_accuracy"), *columns)]
    return json.dumps(
        {
            "orderByKey": "metrics.`val_accuracy`",
            "orderByAsc": False,
            "searchFilter": f"tags.stage = '{stage}'",
            "selectedColumns": selected,
        }
    )


VIEWS = {
    SHARED_VIEW_KEY: _view(
        "train",
        (
            ("metrics", "test_accuracy"),
            ("attributes", "Models"),  # the logged model, its page a click away
            ("params", "model.name"),
            ("params", "learning_rate_used"),
            ("params", "tuned.dropout"),
            ("params", "model.dropout"),
            ("params", "tuned.units"),
            ("params", "model.units"),
            ("params", "tuned.learning_rate"),
        ),
    ),
    # A trial logs the values it drew under the search space's names (tuner.search_space).
    TRIALS_VIEW_KEY: _view(
        "trial",
        (
            ("tags", "search"),  # which search: its tune run's name
            *(
                ("params", name)
                for name in ("name", "learning_rate", "dropout", "units", "fine_tune_layers", "fine_tune_lr_factor")
            ),
        ),
    ),
}

# Fail in seconds, not after MLflow's default minutes of retries against a dead server; and no usage
# telemetry, which would only time out on machines without internet.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def client_env(**extra: str) -> None:
    """MLflow's client settings for this project (CLIENT_ENV and extra), unless the user set them."""
    for key, value in {**CLIENT_ENV, **extra}.items():
        os.environ.setdefault(key, value)


def set_uri_keeping_env(uri: str) -> None:
    """Point MLflow at uri without leaving it in MLFLOW_TRACKING_URI for later runs and children."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # also exports the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


T = TypeVar("T")


def store_call(call: Callable[[], T]) -> T:
    """Run one MLflow call; a store that fails mid-run becomes a one-line TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except TrackingError:
        raise
    except (MlflowException, OSError, ConnectionError) as error:
        raise TrackingError(f"MLflow store {current_uri()} failed ({first_line(error)})") from None
    except Exception as error:  # requests, SQLAlchemy and others: MLflow does not wrap them all
        raise TrackingError(
            f"MLflow store {current_uri()} failed ({type(error).__name__}: {first_line(error)})"
        ) from None


def current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def end_active_run(status: str) -> None:
    """End the active run with status; if the store cannot be told, say so and forget the run locally."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as error:  # the store is gone: the run stays RUNNING there; resuming continues it
        print(f"note: could not mark the MLflow run {status} ({first_line(error)})", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            mlflow.tracking.fluent._active_run_stack.get().pop()


def open_from(run_id: str) -> int:
    """How many of this process's active runs are run_id and the runs opened inside it; 0 if it is not active."""
    import mlflow

    stack = [run.info.run_id for run in mlflow.tracking.fluent._active_run_stack.get()]
    return len(stack) - stack.index(run_id) if run_id in stack else 0


def same_params(run_id: str, params: Mapping[str, Any]) -> bool:
    """Whether every param the run already logged equals the new value (as MLflow stores it, text)."""
    import mlflow

    logged = store_call(lambda: mlflow.MlflowClient().get_run(run_id).data.params)
    return all(logged[key] == str(value) for key, value in params.items() if key in logged)


def close_orphans(parent_id: str, where: str = "") -> None:
    """Mark KILLED the nested runs a killed process left RUNNING under parent_id (those matching `where`)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    query = f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    for orphan in client.search_runs([parent.info.experiment_id], f"{query} and {where}" if where else query):
        client.set_terminated(orphan.info.run_id, status="KILLED")


def close_if_running(uri: str, run_id: str, why: str) -> bool:
    """End a run KILLED with why as its closing tag, if it is still RUNNING; whether it was."""
    import mlflow

    client_env()
    set_uri_keeping_env(uri)
    client = mlflow.MlflowClient()
    if store_call(lambda: client.get_run(run_id)).info.status != "RUNNING":
        return False
    store_call(lambda: client.set_tag(run_id, CLOSED_TAG, why))
    store_call(lambda: client.set_terminated(run_id, status="KILLED"))
    return True


def experiment(client: Any, name: str, artifact_location: str | None) -> tuple[str, dict[str, str]]:
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


def tag_experiment(client: Any, experiment_id: str, key: str, value: str) -> None:
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
def first_use_lock(uri: str) -> Iterator[None]:
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


def artifact_root(uri: str) -> str | None:
    """Beside a SQLite store, `mlartifacts/` (as `mlflow server` lays it out); a server decides itself."""
    path = sqlite_file(uri)
    return (path.parent / "mlartifacts").as_uri() if path is not None else None


def unfinished_run(resume_file: Path | None) -> str | None:
    """The run id recorded in resume_file if that run is one this project left unfinished by a kill.

    Only a run carrying our RESUMABLE_TAG, started with a resume file, counts, and only while RUNNING
    (the process was killed) or KILLED (interrupted): a finished or failed run is never continued,
    whatever its status says otherwise."""
    if resume_file is None or not resume_file.is_file():
        return None
    import mlflow

    run_id = resume_file.read_text(encoding="utf-8").strip()
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # a run of another store, or deleted: start a new one
        return None
    resumable = run.data.tags.get(RESUMABLE_TAG) == "true" and run.info.status in ("RUNNING", "KILLED")
    return run_id if resumable else None
