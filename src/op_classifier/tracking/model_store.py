"""MlflowModelStore: the ModelStore that serving, predict and the CLI use, on an MLflow tracking store."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from op_classifier.errors import first_line
from op_classifier.tracking.naming import PREDICTIONS_ARTIFACT
from op_classifier.tracking.protocols import Evaluated, Served, TrackingError
from op_classifier.tracking.store import SHARED_VIEW_KEY, TRIALS_VIEW_KEY, client_env
from op_classifier.tracking.uris import missing_sqlite, registered

# Registry lookups that mean "no such model, version or alias" rather than a broken store.
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class MlflowModelStore:
    """The registry and artifacts of the MLflow store at uri (a sqlite:/// file or a tracking server)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def _client(self) -> Any:
        client_env()
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def fetch(self, model_uri: str, dst: Path) -> tuple[Path, list[str] | None]:
        """Download a logged Keras model (models:/name@alias, models:/name/N, runs:/id/path) into dst.

        Returns its .keras file and the class names its training run logged (param `classes`), if any.
        """
        if missing_sqlite(self.uri):
            raise TrackingError(
                f"no MLflow store at {self.uri}: train a model first (`make run`) or set MLFLOW_TRACKING_URI"
            )
        client = self._client()
        import mlflow

        try:
            params = client.get_run(_run_of(client, model_uri)).data.params
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dst), tracking_uri=self.uri, registry_uri=self.uri
            )
        except TrackingError:
            raise
        except Exception as error:  # MLflow raises many types for a missing model, alias or run
            raise TrackingError(f"cannot fetch {model_uri} from {self.uri}: {first_line(error)}") from None
        found = sorted(Path(local).rglob("*.keras"))
        if not found:
            raise TrackingError(f"{model_uri} holds no .keras file: not a Keras model")
        # The train stage logs the classes it trained on (inferred ones too); data.classes is the config.
        classes = params.get("classes") or params.get("data.classes")
        parsed = json.loads(classes) if classes and classes.startswith("[") else None
        return found[0], parsed

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `name@alias` points to in the registry; None if the model or alias is missing."""
        if missing_sqlite(self.uri):
            return None  # asking would create an empty store as a side effect
        from mlflow.exceptions import MlflowException

        try:
            return self._client().get_model_version_by_alias(name, alias).version
        except MlflowException as error:
            if error.error_code in MISSING:
                return None
            raise TrackingError(f"MLflow store {self.uri} cannot be read ({first_line(error)})") from None
        except Exception as error:  # MLflow raises many types for a store it cannot reach
            raise TrackingError(f"MLflow store {self.uri} is unreachable ({first_line(error)})") from None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `name@alias` at version, which must exist."""
        if missing_sqlite(self.uri):
            raise TrackingError(f"no MLflow store at {self.uri}: train a model first (`make run`)")
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            client.get_model_version(name, version)
            client.set_registered_model_alias(name, alias, version)
        except MlflowException as error:
            if error.error_code in MISSING:
                raise TrackingError(f"no version {version} of model {name} in {self.uri}") from None
            raise TrackingError(f"MLflow store {self.uri} cannot be written ({first_line(error)})") from None

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Tag version `version` of model `name` (values as text, as MLflow keeps them)."""
        client = self._client()
        try:
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, str(value))
        except Exception as error:  # MLflow raises many types for a store it cannot write
            raise TrackingError(
                f"MLflow store {self.uri} cannot tag {name} version {version} ({first_line(error)})"
            ) from None

    def evaluation(self, ref: str, model_name: str, dst: Path) -> Evaluated:
        """The predictions evaluate kept for `ref`: a run id (training or evaluate), models:/ URI, an
        alias (`champion`, `@name`) or a version (`v3`) of model_name; downloaded into dst."""
        if missing_sqlite(self.uri):
            raise TrackingError(f"no MLflow store at {self.uri}: nothing was evaluated yet (`make run`)")
        client = self._client()
        try:
            training, label = self._training_run(client, ref, model_name)
            found = evaluation_of(client, training, dst)
        except TrackingError:
            raise
        except Exception as error:  # MLflow raises many types for a missing run, version or alias
            raise TrackingError(f"{ref}: no such run, version or alias in {self.uri} ({first_line(error)})") from None
        if found is None:
            raise TrackingError(
                f"{ref}: its evaluation kept no predictions (evaluated before they were kept, or never)"
            )
        path, run = found
        return Evaluated(label, path, run.info.run_id, run.info.start_time)

    def _training_run(self, client: Any, ref: str, model_name: str) -> tuple[str, str]:
        """The training run `ref` names, and how to call it in a table."""
        version = ref[1:] if ref[:1] == "v" and ref[1:].isdigit() else None
        alias = ref.lstrip("@") if ref.startswith("@") or ref == "champion" else None
        if ref.startswith("models:/"):
            uri = ref
        elif version or alias:
            uri = f"models:/{model_name}/{version}" if version else f"models:/{model_name}@{alias}"
        else:
            run = client.get_run(ref)
            parent = run.data.tags.get("mlflow.parentRunId") if run.data.tags.get("stage") == "evaluate" else None
            return parent or ref, f"run {run.info.run_id[:8]}"
        found = registered(uri)
        if found is None:
            raise TrackingError(f"{ref}: not a registered model URI (models:/<name>@<alias> or models:/<name>/<N>)")
        if found.alias:
            model = client.get_model_version_by_alias(found.name, found.alias)
        else:
            model = client.get_model_version(found.name, found.version)
        return model.run_id, f"{found.name} v{model.version}" + (f" @{found.alias}" if found.alias else "")

    def training_evaluation(self, training_run: str, label: str, dst: Path) -> Evaluated | None:
        """The evaluation under a training run (its predictions' evaluate run), or None."""
        if missing_sqlite(self.uri):
            return None
        found = evaluation_of(self._client(), training_run, dst)
        return None if found is None else Evaluated(label, found[0], found[1].info.run_id, found[1].info.start_time)

    def attach(self, run_id: str, path: Path, artifact_path: str) -> None:
        """Attach a file to a finished run, without reopening it."""
        try:
            self._client().log_artifact(run_id, str(path), artifact_path)
        except Exception as error:  # MLflow raises many types for a store it cannot write
            raise TrackingError(f"MLflow store {self.uri} cannot store {path.name} ({first_line(error)})") from None

    def litert_export(self, model_uri: str, quantize: str, dst: Path) -> tuple[Path, dict[str, str]] | None:
        """The LiteRT file `op-classifier export` logged for the registered version model_uri names, in that
        quantisation, downloaded into dst, with the version's tags (its figures); None when there is none."""
        found = registered(model_uri)
        if found is None or missing_sqlite(self.uri):
            return None  # a run or a folder: no version to have been exported
        client = self._client()
        import mlflow

        try:
            if found.alias:
                version = client.get_model_version_by_alias(found.name, found.alias)
            else:
                version = client.get_model_version(found.name, found.version)
            run_id = version.tags.get(f"litert_{quantize}_run_id")
            if run_id is None:
                return None
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="litert", dst_path=str(dst), tracking_uri=self.uri
            )
        except Exception as error:  # MLflow raises many types for a missing version, run or file
            raise TrackingError(
                f"cannot fetch the LiteRT file of {model_uri} from {self.uri}: {first_line(error)}"
            ) from None
        files = sorted(Path(local).glob("*.tflite"))
        return (files[0], dict(version.tags)) if len(files) == 1 else None

    def served(self, model_uri: str, trust_code: bool = False) -> Served:
        """The model model_uri (models:/, runs:/, a path) names, loaded to serve (served.ServedModel)."""
        from op_classifier.tracking.served import served_model

        return served_model(model_uri, self.uri, trust_code)

    def training_run(self, model_uri: str) -> str | None:
        """The run that logged the model a models:/ or runs:/ URI names; None for a local folder."""
        if not model_uri.startswith(("models:/", "runs:/")):
            return None
        return _run_of(self._client(), model_uri)

    def runs_link(self, experiment: str, base_url: str, trials: bool = False) -> str:
        """The MLflow UI page of the experiment's trained models (or its search trials), best val_accuracy first."""
        found = None
        if not missing_sqlite(self.uri):
            with contextlib.suppress(Exception):  # no store or no run yet: the UI's home page still helps
                found = self._client().get_experiment_by_name(experiment)
        if found is None:
            return f"{base_url}/#/experiments"
        view = TRIALS_VIEW_KEY if trials else SHARED_VIEW_KEY
        return f"{base_url}/#/experiments/{found.experiment_id}/runs?viewStateShareKey={view}"

    def ui_command(self, host: str, port: int) -> tuple[list[str], dict[str, str]]:
        """`mlflow ui` on this store, from the same environment as this Python, and its environment's additions.

        One worker, uvicorn's warnings only: its INFO lines (four workers starting) are no news to a user.
        MLflow's own import of starlette.middleware.wsgi warns that starlette deprecates it, once a worker:
        MLflow's to fix, not the user's, so that one warning (by its text) is not shown.
        """
        mlflow = str(Path(sys.executable).parent / "mlflow")
        store = ["--backend-store-uri", self.uri, "--registry-store-uri", self.uri]
        serving = ["--host", host, "--port", str(port), "--workers", "1", "--uvicorn-opts", "--log-level warning"]
        known = "ignore:starlette.middleware.wsgi is deprecated:UserWarning"
        warnings = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), known)))
        app = ["--app-name", "op-classifier"]  # tracking/ui_app.py: opens in model-training mode
        return [mlflow, "ui", *store, *serving, *app], {"PYTHONWARNINGS": warnings}


def evaluation_of(client: Any, training_run: str, dst: Path) -> tuple[Path, Any] | None:
    """The predictions file of the latest evaluate run under training_run (downloaded), and that run."""
    experiment = client.get_run(training_run).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{training_run}' and tags.stage = 'evaluate'"
    for run in client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=5):
        with contextlib.suppress(Exception):  # an evaluation from before predictions were kept
            dst.mkdir(parents=True, exist_ok=True)
            folder = Path(dst) / run.info.run_id
            folder.mkdir(exist_ok=True)
            return Path(client.download_artifacts(run.info.run_id, PREDICTIONS_ARTIFACT, str(folder))), run
    return None


def _run_of(client: Any, model_uri: str) -> str:
    """The run that logged the model a models:/ or runs:/ URI names."""
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").strip("/").split("/")[0]
    ref = registered(model_uri)
    if ref is not None and ref.alias:
        return client.get_model_version_by_alias(ref.name, ref.alias).run_id
    if ref is None or not (ref.version or "").isdigit():
        raise TrackingError(f"{model_uri}: use models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/<path>")
    return client.get_model_version(ref.name, ref.version).run_id
