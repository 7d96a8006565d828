"""MlflowTracker: runs, nested trial runs, metrics, the logged model and its registration in MLflow."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from op_classifier.config import CHAMPION, TrackingConfig
from op_classifier.errors import DataError, OpClassifierError
from op_classifier.tracking.protocols import Judge, TrackingError
from op_classifier.tracking.registry import (
    DATA_HASH_TAG,
    champion_decision,
    champion_tags,
    significance_decision,
)
from op_classifier.tracking.store import (
    CLOSED_TAG,
    EXPERIMENT_KIND,
    RESUMABLE_TAG,
    SHARED_VIEW_PREFIX,
    VIEWS,
    artifact_root,
    client_env,
    close_orphans,
    end_active_run,
    experiment,
    first_use_lock,
    open_from,
    same_params,
    set_uri_keeping_env,
    store_call,
    tag_experiment,
    unfinished_run,
)
from op_classifier.tracking.uris import tracking_uri

LOGGED_MODEL_CODE = Path(__file__).with_name("logged_model.py")


class MlflowTracker:
    """tracking.kind=mlflow: runs, nested trial runs, models and the registry in an MLflow store."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None  # another process's run this one's trials nest under (join)
        self._connect()

    def _connect(self) -> None:
        import mlflow

        client_env()
        uri = tracking_uri(self.cfg)
        set_uri_keeping_env(uri)
        try:
            # MlflowClient() builds the store, which creates the tables of a new SQLite file.
            with first_use_lock(uri):
                client = mlflow.MlflowClient()
                self.experiment_id, tags = experiment(client, self.cfg.experiment, artifact_root(uri))
                # Without the kind MLflow 3's UI opens the experiment on its GenAI overview (traces, tokens);
                # the shared views are the runs table with the rows and columns that matter (runs_link).
                views = [(f"{SHARED_VIEW_PREFIX}{key}", view) for key, view in VIEWS.items()]
                for key, value in (EXPERIMENT_KIND, *views):
                    if tags.get(key) != value:
                        tag_experiment(client, self.experiment_id, key, value)
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
        parent: str | None = None,
    ) -> Iterator[str | None]:
        """Start a run (logging params), or continue run_id, or resume_file's unfinished run; yield its id.

        Only a run this project left unfinished by a kill is continued (store.unfinished_run), and only
        when its params match `params`; otherwise it is closed as KILLED, tagged why, and a new run
        starts. A run that raises ends FAILED (KILLED on Ctrl-C) with the reason as a tag, even when the
        store itself is what failed: then the error is the store's, in one line. `parent`: a run to nest
        under (evaluate's under the training run, which it never reopens).
        """
        import mlflow

        resumed = None if run_id else unfinished_run(resume_file)
        if resumed and params is not None and not same_params(resumed, params):
            print(
                f"note: MLflow run {resumed} was logged with other params; closing it and starting a new run",
                file=sys.stderr,
                flush=True,
            )
            self._close(resumed, "not continued: a later run had other params")
            resumed = None
        run_id = run_id or resumed
        if system_metrics:  # CPU, memory, disk (and GPU with pynvml) every 5 s, beside the curves
            mlflow.set_system_metrics_sampling_interval(5)
        parent = parent or (self.parent_run_id if nested else self.cfg.parent_run)
        active = store_call(
            lambda: mlflow.start_run(
                run_id=run_id,
                # Explicit: the process-wide active experiment is not trusted across clients and threads.
                experiment_id=self.experiment_id,
                run_name=None if run_id else name,
                nested=nested and self.parent_run_id is None,
                parent_run_id=parent,
                log_system_metrics=system_metrics or None,
            )
        )
        try:
            if resumed:
                close_orphans(resumed)
            if resume_file is not None:
                resume_file.parent.mkdir(parents=True, exist_ok=True)
                resume_file.write_text(active.info.run_id, encoding="utf-8")
            marks = {RESUMABLE_TAG: "true"} if resume_file is not None and not resumed else {}
            self.set_tags({**(tags or {}), **marks})
            self.log_params(params or {})
            yield active.info.run_id
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt)
            why = "interrupted (Ctrl-C, or the process that started it is gone)" if interrupted else "failed"
            # This run and those still open inside it (a tuner trial the interrupt cut short), innermost first;
            # none once an outer run's ending closed it (the trial's own context, closed at exit).
            for _ in range(open_from(active.info.run_id)):
                with contextlib.suppress(Exception):  # a lost store keeps the run RUNNING: a later run continues it
                    mlflow.set_tags({CLOSED_TAG: why, **({} if interrupted else {RESUMABLE_TAG: "false"})})
                end_active_run("KILLED" if interrupted else "FAILED")
            raise
        store_call(mlflow.end_run)

    def _close(self, run_id: str, why: str) -> None:
        """End a run this project left unfinished, as KILLED, saying why; it is never continued after."""
        import mlflow

        client = mlflow.MlflowClient()
        store_call(lambda: client.set_tag(run_id, CLOSED_TAG, why))
        store_call(lambda: client.set_tag(run_id, RESUMABLE_TAG, "false"))
        store_call(lambda: client.set_terminated(run_id, status="KILLED"))

    def log_to(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Metrics into another run, finished or not, without reopening it (its status never changes)."""
        import mlflow
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_metric_key(k), float(v), now, 0) for k, v in metrics.items() if _is_number(v)]
        store_call(lambda: mlflow.MlflowClient().log_batch(run_id, metrics=batch))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters to the active run (MLflow takes at most 100 per call)."""
        import mlflow

        items = [(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            store_call(lambda chunk=dict(items[start : start + 100]): mlflow.log_params(chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics to the active run."""
        import mlflow

        clean = {_metric_key(k): float(v) for k, v in metrics.items() if _is_number(v)}
        store_call(lambda: mlflow.log_metrics(clean, step=step))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tag the active run."""
        import mlflow

        store_call(lambda: mlflow.set_tags({k: v for k, v in tags.items() if v is not None}))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file to the active run."""
        if path.exists():
            import mlflow

            store_call(lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback logging every epoch's metrics to the active run, as `epoch_<name>` curves."""
        return _EpochLogger(self)

    @contextlib.contextmanager
    def trial(self, trial_id: str, hparams: Mapping[str, Any]) -> Iterator[None]:
        """A nested run for one tuner trial, under the active (parent) run, or the joined one."""
        if self.parent_run_id is not None:  # a restarted worker re-runs its trial: the killed attempt ends
            close_orphans(self.parent_run_id, f"tags.trial_id = '{trial_id}'")
        # The trials' view filters on the stage, and tells one search's trials from another's by its run's name.
        tags = {"stage": "trial", "trial_id": trial_id, "search": self._search_name()}
        with self.run(f"trial-{trial_id}", nested=True, tags=tags, params=hparams):
            yield

    def _search_name(self) -> str | None:
        """The name of the run the trials nest under (`tune <DVC experiment>`), without its stage word."""
        import mlflow

        parent = self.parent_run_id or (mlflow.active_run() and mlflow.active_run().info.run_id)
        if parent is None:
            return None
        return store_call(lambda: mlflow.MlflowClient().get_run(parent)).info.run_name.removeprefix("tune ")

    @contextlib.contextmanager
    def join(self, param: str, value: str, timeout: float) -> Iterator[str | None]:
        """Nest this process's trials under the RUNNING run whose param `param` is `value` (another
        process's, e.g. a Keras Tuner chief's), waiting up to timeout seconds for it; never end it."""
        import mlflow

        query = f"params.{param} = '{value}' and attributes.status = 'RUNNING'"
        deadline = time.monotonic() + timeout
        while not (found := store_call(lambda: mlflow.MlflowClient().search_runs([self.experiment_id], query))):
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"no running MLflow run with {param}={value} in {tracking_uri(self.cfg)} after {timeout:g} s "
                    "(is the chief running, with the same config, data and code, and the same store?)"
                )
            time.sleep(1)
        self.parent_run_id = found[0].info.run_id
        try:
            yield self.parent_run_id
        finally:
            self.parent_run_id = None

    def log_model(self, model: keras.Model, example: np.ndarray) -> str | None:
        """Log the model as a pixel-checking pyfunc with its signature and an input example; return its URI.

        MLflow links the run's metrics logged at the model's step to the model (log_model's default
        step 0 gave it the first epoch's numbers): it is logged at MODEL_STEP, a step no epoch nor
        system-metrics sample reaches, so it carries only what evaluate measures on it.
        """
        import tempfile

        import mlflow
        from mlflow.models import infer_signature

        from op_classifier.tracking.pyfunc import PixelClassifier

        signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
        with tempfile.TemporaryDirectory() as tmp:
            keras_file = Path(tmp) / "model.keras"
            model.save(keras_file)
            # A LoggedModel (MLflow 3): linked to the run, listed in the runs table's Models column.
            store_call(
                lambda: mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(LOGGED_MODEL_CODE),  # models from code: no pickle to run
                    artifacts={PixelClassifier.ARTIFACT: str(keras_file)},
                    signature=signature,
                    input_example=example,
                    pip_requirements=pip_requirements(),
                    step=MODEL_STEP,
                )
            )
        return f"runs:/{mlflow.active_run().info.run_id}/model"

    def log_dataset(self, name: str, digest: str, source: Path, sizes: Mapping[str, int], prepared_hash: str) -> None:
        """Record the data as the run's input (the runs table's Dataset column): digest, split sizes."""
        import mlflow

        dataset = _dataset(name, digest, source)
        tags = {**{f"{split}_images": str(count) for split, count in sizes.items()}, "prepared_hash": prepared_hash}
        store_call(lambda: mlflow.log_input(dataset, context="training", tags=tags))

    def score_model(self, model_uri: str, metrics: Mapping[str, float], dataset: Mapping[str, str] | None) -> None:
        """Log metrics in the active run, linked to the logged model of `model_uri` (its page shows them)."""
        import mlflow

        run_id = model_uri.removeprefix("runs:/").split("/")[0]
        outputs = store_call(lambda: mlflow.MlflowClient().get_run(run_id)).outputs
        models = [output.model_id for output in (outputs.model_outputs if outputs else [])]
        if not models:
            raise TrackingError(f"{model_uri}: the run logged no model to attach its scores to")
        found = _dataset(dataset["name"], dataset["digest"], Path(dataset["source"])) if dataset else None
        clean = {_metric_key(k): float(v) for k, v in metrics.items() if _is_number(v)}
        store_call(lambda: mlflow.log_metrics(clean, model_id=models[-1], dataset=found))

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
        """Register the model; move the champion alias to it only if it meets target and beats it.

        Scores are compared only when both were measured on the same prepared data (same files, same
        split): a champion scored on other data keeps its alias, and the summary says why. Under
        tracking.promotion=significant, beating it also takes a paired test on the same images: `judge`
        of the champion's predictions file, whose McNemar p must be < tracking.alpha.
        """
        return store_call(lambda: self._register(model_uri, score, target, metric, data_hash, description, judge))

    def _register(
        self,
        model_uri: str,
        score: float,
        target: float,
        metric: str,
        data_hash: str | None,
        description: str | None,
        judge: Judge | None,
    ) -> dict[str, Any]:
        import mlflow

        client = mlflow.MlflowClient()
        with _quiet_registry_lookup():
            version = mlflow.register_model(model_uri, self.cfg.model_name).version
        if description:
            client.update_model_version(self.cfg.model_name, version, description=description)
        client.set_model_version_tag(self.cfg.model_name, version, metric, str(score))
        if data_hash:
            client.set_model_version_tag(self.cfg.model_name, version, DATA_HASH_TAG, data_hash)
        current = champion_tags(client, self.cfg.model_name)
        decision = champion_decision(score, target, data_hash, metric, current)
        if self.cfg.promotion == "significant":
            beats = decision["champion"] and "previous_champion_score" in decision  # else no test to make
            result, why_not = self._paired_with_champion(judge, metric) if beats else (None, "")
            decision = significance_decision(decision, result, why_not)
            tags = {"promotion": "significant", "champion_reason": decision["champion_reason"]}
            for key in ("difference", "interval", "mcnemar_p"):
                if key in decision["promotion"]:
                    tags[f"promotion_{key}"] = str(decision["promotion"][key])
            for key, value in tags.items():
                client.set_model_version_tag(self.cfg.model_name, version, key, value)
        if decision["champion"]:
            client.set_registered_model_alias(self.cfg.model_name, CHAMPION, version)
        return {"registered_version": int(version), **decision}

    def _paired_with_champion(self, judge: Judge | None, metric: str) -> tuple[dict[str, Any] | None, str]:
        """`judge` of the champion's predictions; or None and why no test could be made."""
        import tempfile

        import mlflow

        from op_classifier.tracking.model_store import evaluation_of

        if judge is None:
            return None, f"tracking.champion_metric {metric} is not a split's accuracy"
        client = mlflow.MlflowClient()
        with tempfile.TemporaryDirectory() as tmp:
            champion = client.get_model_version_by_alias(self.cfg.model_name, CHAMPION)
            found = evaluation_of(client, champion.run_id, Path(tmp))
            if found is None:
                return None, f"the champion (version {champion.version}) has no predictions: evaluate it again"
            try:
                return dict(judge(found[0])), ""
            except DataError as error:  # other images: the data-hash rule says so first, this is the backstop
                return None, str(error)


@contextlib.contextmanager
def _quiet_registry_lookup() -> Iterator[None]:
    """Silence MLflow's prints of what it registered, and its note that it found a runs:/ path's LoggedModel.

    MLflow 3 keeps a logged model as a LoggedModel, not in the run's artifacts: registering it by its
    runs:/<id>/model path (what train records) finds it there, which is what we want, and warns.
    """
    logger = logging.getLogger("mlflow.tracking._model_registry.fluent")

    def keep(record: logging.LogRecord) -> bool:
        return "has no artifacts at artifact path" not in record.getMessage()

    logger.addFilter(keep)
    try:
        # MLflow prints "Successfully registered model" and "Created version" itself: evaluate's own
        # line says which version it registered.
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.removeFilter(keep)


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, tracker: MlflowTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # Prefixed as TensorBoard does: the plain names (val_accuracy) belong to the evaluated model, and
        # MLflow's runs table shows a key's highest-step value, which would otherwise be the last epoch's.
        self.tracker.log_metrics({f"epoch_{k}": v for k, v in (logs or {}).items()}, step=epoch)


# The distributions a logged model needs, by Keras backend: a JAX install has no `tensorflow`.
BACKEND_REQUIREMENTS = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


MODEL_STEP = 2**53  # above any epoch or 5-second sample; exact in a float64 (the UI's JavaScript)


def _dataset(name: str, digest: str, source: Path) -> Any:
    """An MLflow dataset entry for a local folder: its name, digest and path."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (schemes "" and "file"), then warns that a
        # path matches both; the two are the same class, so the choice cannot matter.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways", category=UserWarning)
        dataset_source = resolve_dataset_source(str(source.resolve()))
    return MetaDataset(dataset_source, name=name, digest=digest)


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
