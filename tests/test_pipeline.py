"""tune -> train -> evaluate at tiny budgets: real Keras Tuner searches, trainings and MLflow (SQLite)."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from op_classifier import models
from op_classifier.config import Config, ConfigError, to_yaml
from op_classifier.data.prepared import load_labels
from op_classifier.errors import DataError
from op_classifier.metric_names import metric_names
from op_classifier.models.common.metrics import metrics
from op_classifier.stages import evaluate, train, tune
from op_classifier.tracking import TrackingError
from op_classifier.training import hparams
from tests.conftest import TINY, compose, free_port, mlflow_client, paths_under, tiny_cfg

CLI = str(Path(sys.executable).parent / "op-classifier")


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The tiny sample prepared, once for this module (conftest.tiny_project)."""
    return tiny_project


def _runs(root: Path) -> list:
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("op-classifier")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def pipeline(project: Path) -> tuple[Config, dict, dict, dict]:
    """tune, train and evaluate once on the tiny project: (config, and each stage's summary)."""
    cfg = tiny_cfg(project)
    return cfg, tune.run(cfg), train.run(cfg), evaluate.run(cfg)


def test_logging_the_data_set_warns_nothing(project: Path) -> None:
    """The train stage's output carries no MLflow warning about how it read the data's path."""
    from op_classifier.tracking import make_tracker

    tracker = make_tracker(tiny_cfg(project).tracking)
    with warnings.catch_warnings(record=True) as caught, tracker.run("dataset-only"):
        warnings.simplefilter("always")
        tracker.log_dataset("raw", "abc123", project / "data/raw", {"train": 1}, "abc123")
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_tune_train_evaluate_track_everything(project: Path, pipeline: tuple) -> None:
    cfg, tuned, trained, result = pipeline
    assert tuned["trials"] == 2 and set(tuned["best"]) == {"dropout", "learning_rate"}  # the default resnet's
    best = (project / cfg.paths.best_hparams).read_text()
    assert "dropout" in best and "tuning_run_id" in best
    assert (project / cfg.paths.leaderboard).read_text().count("\n") == 3  # header + 2 trials
    import csv

    with (project / cfg.paths.leaderboard).open() as handle:  # a gap within noise is said, not ranked (issue 23)
        ranked = list(csv.DictReader(handle))
    assert ranked[0]["vs_best"] == "best" and ranked[1]["vs_best"] in ("within noise", "worse")
    assert 0.0 <= float(ranked[1]["mcnemar_p_vs_best"]) <= 1.0
    assert tuned["within_noise_of_best"] == ([ranked[1]["trial_id"]] if ranked[1]["vs_best"] == "within noise" else [])

    assert (Path(cfg.paths.model) / "model.keras").is_file()
    assert (Path(cfg.paths.model) / "saved_model/1/saved_model.pb").is_file()
    assert trained["epochs_run"] == 2

    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert {"val_accuracy", "test_accuracy", "test_per_class", "scenes"} <= set(metrics)
    assert set(metrics["test_per_class"]) == {"Luffy", "Nami", "Sanji", "Zoro"}
    assert {"exact_set_accuracy", "recall"} <= set(metrics["scenes"])
    assert Path(cfg.paths.confusion).read_text().startswith("actual,predicted")
    assert result["registered_version"] == 1

    runs = _runs(project)
    parent = next(r for r in runs if r.data.tags.get("stage") == "tune")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2
    assert all(
        "dropout" in t.data.params and {"val_accuracy", "epoch_val_accuracy"} <= set(t.data.metrics) for t in trials
    )
    training = next(r for r in runs if r.data.tags.get("stage") == "train")
    assert training.data.params["train.epochs"] == "2" and "tuned.dropout" in training.data.params
    assert training.data.tags["tuning_run_id"] == parent.info.run_id and training.data.tags["data_hash"]
    assert {"val_accuracy", "test_accuracy", "epoch_loss", "epoch_val_loss"} <= set(training.data.metrics)
    (output,) = training.outputs.model_outputs  # the runs table's Models column
    logged = mlflow_client(project).get_logged_model(output.model_id)
    assert logged.source_run_id == training.info.run_id and logged.name == "model"
    (dataset,) = training.inputs.dataset_inputs  # the runs table's Dataset column
    # No .dvc file tracks this project's data/raw: the digest is the prepared data's hash.
    assert dataset.dataset.digest == training.data.tags["data_hash"] and dataset.dataset.name == "prepared"
    assert {t.key: t.value for t in dataset.tags}["train_images"] == "23"
    # Evaluate logs into its own run under the training run, which stays as it ended (issue 25).
    (evaluated,) = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert evaluated.data.tags["mlflow.parentRunId"] == training.info.run_id and training.info.status == "FINISHED"
    assert evaluated.data.metrics["test_accuracy"] == training.data.metrics["test_accuracy"] == result["test_accuracy"]
    assert training.data.tags["op_classifier.resumable"] == "true"  # until it finished: never continued now
    figures = {a.path for a in mlflow_client(project).list_artifacts(evaluated.info.run_id, "figures")}
    assert figures == {
        f"figures/{name}.png"
        for name in ("learning_curves", "confusion_matrix", "per_class_scores", "worst_val_images")
    }
    # The error gallery (issue 36): a DVC output, in the summary, logged beside the metrics; every val and
    # test image once (no cell of the tiny split reaches the cap).
    evaluation = {a.path for a in mlflow_client(project).list_artifacts(evaluated.info.run_id, "evaluation")}
    assert "evaluation/gallery.html" in evaluation and result["gallery"] == cfg.paths.gallery
    page = Path(cfg.paths.gallery).read_text(encoding="utf-8")
    images = sum(len(load_labels(Path(cfg.paths.prepared), split)) for split in ("val", "test"))
    assert page.count("<img ") == images and 'id="split-val"' in page and 'id="split-test"' in page
    # The runs table tells runs apart by name: the model and its main settings (DVC_EXP_NAME unset here).
    assert training.info.run_name == f"train model=resnet image_size=32 tuner=random epochs=2 seed={cfg.seed}"
    assert parent.info.run_name == "tune model=resnet tuner=random max_trials=2 image_size=32"
    experiment = mlflow_client(project).get_experiment(training.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens on runs
    version = mlflow_client(project).get_model_version("op-classifier", "1")
    assert version.run_id == training.info.run_id


def test_the_confusion_matrix_counts_its_images_as_the_split_does() -> None:
    """It said "test, 160 images" where the data set said 180 (issue 26): 20 were scenes, not counted."""
    from op_classifier.reports.figures import single_count

    scenes = np.array([[1, 1, 0, 0]] * 20)
    assert single_count(np.vstack([np.eye(4)[np.arange(160) % 4], scenes])) == "160 single-character images of 180"
    assert single_count(np.eye(4)) == "4 single-character images"


def test_runs_table_shows_the_evaluated_models_accuracy(project: Path, pipeline: tuple) -> None:
    """MLflow's table lists a key's highest-step value: val_accuracy must be evaluate's, logged once."""
    cfg = pipeline[0]
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    training = next(r for r in _runs(project) if r.data.tags.get("stage") == "train")
    for key in ("val_accuracy", "test_accuracy"):
        history = mlflow_client(project).get_metric_history(training.info.run_id, key)
        assert [m.value for m in history] == [pytest.approx(metrics[key])]
        assert training.data.metrics[key] == pytest.approx(metrics[key])
    curve = mlflow_client(project).get_metric_history(training.info.run_id, "epoch_val_accuracy")
    assert [m.step for m in curve] == [0, 1]  # the per-epoch curve lives under its own name


def test_the_logged_model_carries_its_evaluated_scores_and_the_version_says_how(project: Path, pipeline: tuple) -> None:
    """Its page showed the first epoch's epoch_val_accuracy (0.44 where the model scored 0.95, issue 26)."""
    cfg = pipeline[0]
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    client = mlflow_client(project)
    training = next(r for r in _runs(project) if r.data.tags.get("stage") == "train")
    (output,) = training.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    scores = {metric.key: metric for metric in logged.metrics}
    assert not any(key.startswith(("epoch_", "system/")) for key in scores)  # no epoch's numbers pass for its own
    assert scores["val_accuracy"].value == pytest.approx(metrics["val_accuracy"])
    assert scores["test_accuracy"].value == pytest.approx(metrics["test_accuracy"])
    for name, values in metrics["test_per_class"].items():
        assert scores[f"test_per_class.{name}.f1"].value == pytest.approx(values["f1"])
    assert {metric.dataset_name for metric in logged.metrics} == {"prepared"}
    assert {metric.dataset_digest for metric in logged.metrics} == {training.data.tags["data_hash"]}
    description = client.get_model_version("op-classifier", "1").description
    assert f"val_accuracy {metrics['val_accuracy']:.4f}" in description and training.info.run_id in description
    assert "Luffy, Nami, Sanji, Zoro" in description and "single-character images of" in description


def test_saved_model_signature_matches_keras(pipeline: tuple) -> None:
    """TensorFlow Serving's contract: (batch, S, S, 3) float32 pixels in, per-class probabilities out."""
    import keras
    import tensorflow as tf

    cfg = pipeline[0]
    model_dir = Path(cfg.paths.model)
    serving = tf.saved_model.load(str(model_dir / "saved_model/1")).signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 32, 32, 3]
    images = np.load(Path(cfg.paths.prepared) / "test/images.npy").astype("float32")
    served = next(iter(serving(tf.constant(images)).values())).numpy()
    expected = keras.saving.load_model(model_dir / "model.keras", compile=False).predict(images, verbose=0)
    assert served.shape == (len(images), 4)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def _trials_of(root: Path, parent_id: str) -> list:
    return [r for r in _runs(root) if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.mark.slow  # the fingerprint's rule is test_state's; this is the rule inside three real searches
def test_a_search_is_reused_only_by_its_own_config(project: Path, tmp_path: Path, capsys) -> None:
    own = (
        f"paths.tuning={tmp_path / 'search'}",
        f"paths.best_hparams={tmp_path / 'best.yaml'}",
        f"paths.leaderboard={tmp_path / 'board.csv'}",
        "tuner.max_trials=1",  # one trial shows a search reused or not: the searches themselves cost the time
    )
    first = tune.run(tiny_cfg(project, *own))
    first_parent = (tmp_path / "search/mlflow_run_id").read_text()

    changed = tune.run(tiny_cfg(project, *own, "model.dropout=0.5"))
    assert "not resuming the tuner search" in capsys.readouterr().err
    parent = (tmp_path / "search/mlflow_run_id").read_text()
    assert parent != first_parent and changed["trials"] == 1
    trials = _trials_of(project, parent)
    assert len(trials) == 1 and all(t.info.status == "FINISHED" for t in trials)
    assert all(t.data.params["model.dropout"] == "0.5" for t in _runs(project) if t.info.run_id == parent)

    # Same config again (`dvc repro -f`, or a change of a head-phase key this search does not read):
    # the finished search stands, named as reused; no trial runs again, no run is logged again.
    runs_before = len(_runs(project))
    best = (tmp_path / "best.yaml").read_text()
    (tmp_path / "best.yaml").unlink()  # as DVC does before it re-runs a stage
    again = tune.run(tiny_cfg(project, *own, "model.dropout=0.5", "train.label_smoothing=0.05"))
    assert "reusing the finished search" in capsys.readouterr().err and again["reused"]
    assert (tmp_path / "best.yaml").read_text() == best and again["trials"] == 1 == first["trials"]
    assert len(_runs(project)) == runs_before and (tmp_path / "search/mlflow_run_id").read_text() == parent


def test_missing_prepared_data_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the prepare stage"):
        tune.run(tiny_cfg(tmp_path, "tracking=none"))


def test_objective_the_model_does_not_report_fails_before_training(project: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tuner.objective: the model does not report 'val_f1'"):
        tiny_cfg(project, "tuner.objective=val_f1", f"paths.tuning={tmp_path / 'search'}")  # refused when composed
    cfg = tiny_cfg(
        project, "data.classes=null", "tuner.objective=val_recall_Usopp", f"paths.tuning={tmp_path / 'search'}"
    )
    with pytest.raises(ConfigError, match="tuner.objective: the model does not report 'val_recall_Usopp'"):
        tune.run(cfg)  # no class list in the config: the prepared data's classes decide, before any search
    assert not (tmp_path / "search").exists()


def test_model_reports_the_metric_names_the_config_checks() -> None:
    classes = ["Luffy", "Nami"]
    reported = ["loss", *(m.name for m in metrics(classes))]
    assert metric_names(classes) == reported + [f"val_{name}" for name in reported]


@pytest.mark.parametrize("name", models.names())
def test_every_architecture_rules_each_tunable_name_and_its_builder_takes_them(name: str) -> None:
    schema = models.get(name).params
    assert set(schema.rules()) == {*schema.args(), "learning_rate"}  # rules() raises KeyError when one lacks a rule
    taken = set(inspect.signature(models.get(name).build).parameters) - {"num_classes", "image_size", "seed"}
    assert taken == set(schema.args())


def test_tuner_none_trains_the_configured_model() -> None:
    """`experiment=tiny tuner=none model.dropout=0.3`: tune records no values, so train builds dropout 0.3."""
    cfg = compose(*TINY, "tuner=none", "model.dropout=0.3")
    args, learning_rate = hparams.final_args(cfg.model, cfg.train, {})
    assert cfg.tuner.kind == "none" and args["dropout"] == 0.3 and learning_rate == cfg.train.learning_rate


def test_search_space_entry_of_unknown_type_or_name_is_a_config_error(project: Path) -> None:
    with pytest.raises(ConfigError, match="tuner.search_space.dropout.type: 'integer' is not one of"):
        tiny_cfg(project, "tuner.search_space.dropout.type=integer")
    with pytest.raises(ConfigError, match="tuner.search_space.momentum: not a tunable name"):
        tune.run(tiny_cfg(project, "+tuner.search_space.momentum={type: float, min: 0.1, max: 0.9}"))


def test_unreachable_mlflow_store_is_a_clear_error(project: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable.*tracking=none"):
        tune.run(tiny_cfg(project, "tracking.uri=http://127.0.0.1:9"))
    assert time.monotonic() - started < 60


def _popen(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _completed_trials(search: Path) -> dict[str, float]:
    """trial id -> modification time of its trial.json, for trials Keras Tuner marked COMPLETED."""
    done = {}
    for path in search.glob("trial_*/trial.json"):
        try:
            if json.loads(path.read_text()).get("status") == "COMPLETED":
                done[path.parent.name] = path.stat().st_mtime
        except (json.JSONDecodeError, OSError):
            continue  # being written
    return done


def _finished_trial_runs(root: Path) -> int:
    if not (root / "mlflow.db").is_file():
        return 0
    return sum(1 for r in _runs(root) if r.data.tags.get("trial_id") and r.info.status == "FINISHED")


def _paths_args(root: Path) -> list[str]:
    return [*paths_under(root), f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(project: Path, tmp_path: Path) -> None:
    args = [
        *TINY,
        *_paths_args(project),
        "tuner.max_trials=4",
        "tuner.epochs=3",
        f"paths.tuning={tmp_path / 'search'}",
        f"paths.best_hparams={tmp_path / 'best.yaml'}",
        f"paths.leaderboard={tmp_path / 'board.csv'}",
    ]
    before = _finished_trial_runs(project)
    first = _popen(project, "tune", *args)
    # Keras Tuner marks a trial COMPLETED a moment before its MLflow run is closed: wait for both.
    _wait_for(
        lambda: len(_completed_trials(tmp_path / "search")) >= 1 and _finished_trial_runs(project) > before, first
    )
    _kill(first)
    finished = _completed_trials(tmp_path / "search")

    second = subprocess.run([CLI, "tune", *args], cwd=project, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    after = _completed_trials(tmp_path / "search")
    assert len(after) == 4
    assert {trial: after[trial] for trial in finished} == finished  # not re-run, not rewritten
    # One parent run, continued; the trial the kill interrupted is marked KILLED, not left RUNNING.
    parent_id = (tmp_path / "search/mlflow_run_id").read_text()
    trials = [r for r in _runs(project) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.info.status for r in trials).count("FINISHED") == 4
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)


def _train_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        *_paths_args(root),
        "tuner=none",
        "train.epochs=12",
        "train.patience=100",
        f"paths.best_hparams={tmp_path / 'best.yaml'}",
        f"paths.leaderboard={tmp_path / 'board.csv'}",
        f"paths.checkpoints={tmp_path / 'ckpt'}",
        f"paths.model={tmp_path / 'model'}",
        f"paths.history={tmp_path / 'history.csv'}",
        *extra,
    ]


def _epochs(history: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:] if line[:1].isdigit()]


def _train_killed_after_epochs(root: Path, args: list[str], history: Path, epochs: int = 3) -> None:
    subprocess.run([CLI, "tune", *args], cwd=root, check=True, capture_output=True)
    first = _popen(root, "train", *args)
    _wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) > epochs, first)
    _kill(first)


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_epoch_with_a_whole_history(project: Path, tmp_path: Path) -> None:
    args, history = _train_args(project, tmp_path), tmp_path / "history.csv"
    _train_killed_after_epochs(project, args, history)
    assert len(_epochs(history)) >= 3
    history.unlink()  # as DVC does before it re-runs a stage

    second = subprocess.run([CLI, "train", *args], cwd=project, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert '"resumed": true' in second.stdout
    assert _epochs(history) == list(range(12))  # every epoch once: the history survived the resume


@pytest.mark.slow
def test_killed_training_never_resumes_under_another_config(project: Path, tmp_path: Path) -> None:
    """Tracking off: the checkpoint alone must not be resumed after seed/batch or architecture changes."""
    args, history = _train_args(project, tmp_path, "tracking=none"), tmp_path / "history.csv"
    _train_killed_after_epochs(project, args, history)
    for change in (("seed=7", "train.batch_size=64"), ("model.widths=[16,32]",)):
        again = subprocess.run(
            [CLI, "train", *args, *change, "train.epochs=2"], cwd=project, capture_output=True, text=True
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert '"resumed": false' in again.stdout and "not resuming the training checkpoint" in again.stderr
        assert _epochs(history) == [0, 1]


@pytest.mark.slow
def test_killed_then_changed_config_never_wedges_tracking(project: Path, tmp_path: Path) -> None:
    """A kill leaves MLflow runs RUNNING with logged params; a changed config must start new runs."""
    args, history = _train_args(project, tmp_path), tmp_path / "history.csv"
    _train_killed_after_epochs(project, args, history)
    killed = (tmp_path / "ckpt/mlflow_run_id").read_text()
    again = subprocess.run(
        [CLI, "train", *args, "model.widths=[16,32]", "train.epochs=2"], cwd=project, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    status = {r.info.run_id: r.info.status for r in _runs(project)}
    new = (tmp_path / "ckpt/mlflow_run_id").read_text()
    assert status[killed] == "KILLED" and status[new] == "FINISHED"

    search = [*args, "tuner=random", "tuner.max_trials=6", f"paths.tuning={tmp_path / 'search'}"]
    first = _popen(project, "tune", *search)
    _wait_for(lambda: len(_completed_trials(tmp_path / "search")) >= 1, first)
    _kill(first)
    changed = subprocess.run([CLI, "tune", *search, "tuner.max_trials=2"], cwd=project, capture_output=True, text=True)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "not resuming the tuner search" in changed.stderr and '"trials": 2' in changed.stdout


@pytest.mark.slow
def test_an_unreadable_checkpoint_starts_fresh_instead_of_wedging(project: Path, tmp_path: Path, capsys) -> None:
    cfg = tiny_cfg(project, "tuner=none", "tracking=none", *_own_outputs(tmp_path))
    tune.run(cfg)
    train.claim_checkpoints(cfg, hparams.read_best(Path(cfg.paths.best_hparams))["values"])  # this config's...
    backup = Path(cfg.paths.checkpoints) / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 88)  # ...cut short by a kill
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    summary = train.run(cfg)
    assert "cannot be read" in capsys.readouterr().err
    assert summary["epochs_run"] == 2 and (Path(cfg.paths.model) / "model.keras").is_file()


def _own_outputs(tmp_path: Path) -> list[str]:
    return [
        f"paths.{key}={tmp_path / key}"
        for key in ("tuning", "best_hparams", "leaderboard", "checkpoints", "model", "history", "metrics", "confusion")
    ]


def _stage_losing_its_server(
    root: Path, tmp_path: Path, stage: str, args: list[str], ready: Callable[[], bool], port: int
) -> tuple[int, str]:
    """Run a stage against a real `mlflow server`, kill the server once ready(); (exit code, stderr)."""
    server = _mlflow_server(tmp_path, port)
    try:
        process = subprocess.Popen(
            [CLI, stage, *args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _wait_for(ready, process)
        _kill(server)
        out, err = process.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    assert "Traceback" not in err, out + err
    return process.returncode, err


@pytest.mark.slow
def test_a_tracking_server_lost_mid_training_stops_in_one_line_and_keeps_the_checkpoint(
    project: Path, tmp_path: Path
) -> None:
    port = free_port()
    args = _train_args(project, tmp_path, f"tracking.uri=http://127.0.0.1:{port}", "train.epochs=40")
    history = tmp_path / "history.csv"
    # tuner=none only records empty best values; the server is not up yet.
    subprocess.run([CLI, "tune", *args, "tracking=none"], cwd=project, check=True, capture_output=True)
    code, err = _stage_losing_its_server(
        project, tmp_path, "train", args, lambda: history.is_file() and len(history.read_text().splitlines()) > 2, port
    )
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: MLflow store http://"), err
    assert (tmp_path / "ckpt/backup/latest.weights.h5").is_file()  # the next run resumes from here
    assert len(_epochs(history)) < 40


@pytest.mark.slow
def test_a_tracking_server_lost_mid_search_stops_in_one_line(project: Path, tmp_path: Path) -> None:
    port = free_port()
    args = [
        *TINY,
        *_paths_args(project),
        f"tracking.uri=http://127.0.0.1:{port}",
        "tuner.max_trials=8",
        "tuner.epochs=4",
        f"paths.tuning={tmp_path / 'search'}",
        f"paths.best_hparams={tmp_path / 'b.yaml'}",
        f"paths.leaderboard={tmp_path / 'board.csv'}",
    ]
    code, err = _stage_losing_its_server(
        project, tmp_path, "tune", args, lambda: len(_completed_trials(tmp_path / "search")) >= 1, port
    )
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: MLflow store http://"), err
    assert len(_completed_trials(tmp_path / "search")) < 8  # it stopped, not tried every trial


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    import urllib.request

    mlflow = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def up() -> bool:
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        return False

    _wait_for(up, server, timeout=120)
    return server


def test_unknown_champion_metric_is_a_config_error(project: Path, pipeline: tuple) -> None:
    with pytest.raises(ConfigError, match="tracking.champion_metric: evaluate reports no 'val_acc'"):
        evaluate.run(tiny_cfg(project, "tracking.champion_metric=val_acc"))


@pytest.mark.slow
def test_a_stage_whose_parent_is_killed_stops_and_its_run_says_killed(project: Path, tmp_path: Path) -> None:
    """SIGKILL of `dvc` alone left train finishing every epoch and logging a FINISHED run (issue 25)."""
    import psutil

    root = tmp_path / "stage"
    shutil.copytree(project / "conf", root / "conf")
    shutil.copytree(project / "data/prepared", root / "data/prepared")  # a stage's paths stay in its project
    overrides = [*_paths_args(root), "tuner=none", "train.epochs=500", "train.patience=500"]
    cfg = tiny_cfg(root, *overrides, f"paths.prepared={root / 'data/prepared'}")
    (root / "params.yaml").write_text(to_yaml(compose(*TINY, *overrides, f"paths.prepared={root / 'data/prepared'}")))
    tune.run(cfg)  # the stage reads what tune wrote
    launcher = (  # what dvc does: start the stage, then wait for it; started in the background (SIGINT ignored)
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-m', 'op_classifier.stages.train'], stderr=open('stage.err', 'w'))\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=root, stdout=subprocess.PIPE, text=True)
    stage = psutil.Process(int(parent.stdout.readline()))
    history = Path(cfg.paths.history)
    _wait_for(lambda: history.is_file() and history.read_text().count("\n") >= 2, parent)  # epochs under way
    parent.kill()
    parent.wait()
    stage.wait(timeout=60)  # it notices within a second or two, and ends its epoch
    err = (root / "stage.err").read_text()
    assert "error: the process that started this stage" in err and "is gone: stopping" in err
    (run,) = [
        r
        for r in mlflow_client(root).search_runs(
            [mlflow_client(root).get_experiment_by_name("op-classifier").experiment_id]
        )
        if r.data.tags.get("stage") == "train"
    ]
    assert run.info.status == "KILLED"
    assert history.read_text().count("\n") < 400  # stopped, far from its 500 epochs


def test_each_training_epoch_is_one_short_line(capsys) -> None:
    """Keras's lines carried some 20 per-class metrics an epoch (about 300 characters, issue 26)."""
    from op_classifier import progress
    from op_classifier.models.common.compile import compile_model
    from op_classifier.models.seed_cnn import build_model

    classes = ["Luffy", "Nami", "Sanji", "Zoro"]
    model = compile_model(build_model(4, 16, filters=(4,), units=8, resize=None, seed=0), 1e-3, classes)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[np.arange(8) % 4]
    model.fit(
        images,
        labels,
        validation_data=(images, labels),
        epochs=2,
        verbose=0,
        callbacks=[progress.epoch_lines("val_auc")],
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(len(line) < 120 and "precision_" not in line for line in lines), lines
    names = [part.split()[0] for part in lines[0].split(" - ")[2:]]
    assert names == ["loss", "accuracy", "val_accuracy", "val_auc", "lr"]
    assert lines[0].endswith(" - lr 0.001")


@pytest.mark.slow
def test_a_failing_evaluate_never_changes_the_finished_training_run(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluate reopened the training run and, failing, ended it FAILED; the next train then logged into
    it again (epoch_loss with 24 points over steps 0 to 11, issue 25)."""
    from op_classifier.tracking.runs import MlflowTracker

    moved = [*paths_under(tmp_path, skip=("raw", "prepared")), f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    cfg = compose(*TINY, *paths_under(project), *moved, "tuner=none")
    tune.run(cfg)
    train.run(cfg)

    def refuse(*args: object, **kwargs: object) -> dict:
        raise TrackingError("MLflow store refuses the model name")

    monkeypatch.setattr(MlflowTracker, "register", refuse)
    with pytest.raises(TrackingError):
        evaluate.run(cfg)
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("op-classifier").experiment_id])
    (training,) = [r for r in runs if r.data.tags.get("stage") == "train"]
    (evaluated,) = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert training.info.status == "FINISHED" and evaluated.info.status == "FAILED"
    monkeypatch.undo()
    train.run(cfg)  # the same config again: a new run, the finished one untouched
    runs = client.search_runs([client.get_experiment_by_name("op-classifier").experiment_id], "tags.stage = 'train'")
    assert len(runs) == 2 and client.get_run(training.info.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(training.info.run_id, "epoch_loss")]
    assert steps == [0, 1]  # its two epochs, logged once


@pytest.mark.slow
def test_compare_pairs_the_workspace_with_a_run_and_refuses_bad_references(project: Path, pipeline: tuple) -> None:
    """`op-classifier compare` (issue 23): the same model twice is a tie, kept with its evaluate run;
    an unknown run, version or experiment, or a run that kept no predictions, is one line and exit 2."""
    cfg, _, trained, evaluated = pipeline
    overrides = [*TINY, *paths_under(project), f"tracking.uri=sqlite:///{project / 'mlflow.db'}"]

    def compare(a: str, b: str, *options: str) -> subprocess.CompletedProcess:
        command = [CLI, "compare", a, b, *overrides, *options]  # options after the overrides, as argparse reads
        return subprocess.run(command, cwd=project, capture_output=True, text=True)

    done = compare("workspace", trained["run_id"], "--split", "val", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["accuracy"]["a"] == pytest.approx(evaluated["val_accuracy"]) == result["accuracy"]["b"]
    assert result["mcnemar_p"] == 1.0 and result["verdict"].startswith("no significant difference")
    kept = {
        artifact.path
        for run in _runs(project)
        if run.data.tags.get("stage") == "evaluate"
        for artifact in mlflow_client(project).list_artifacts(run.info.run_id, "comparisons")
    }
    assert any(path.endswith(".txt") for path in kept) and any(path.endswith(".json") for path in kept)
    table = compare("workspace", trained["run_id"]).stdout
    assert "McNemar exact p = 1" in table and "95% interval" in table and "test:" in table

    tune_run = next(r for r in _runs(project) if r.data.tags.get("stage") == "tune").info.run_id
    for ref, said in (
        ("0" * 32, "no such run"),
        ("v99", "no such run, version or alias"),
        (tune_run, "kept no predictions"),
        ("no-such-experiment", "not a run id, version"),
    ):
        done = compare("workspace", ref)
        assert done.returncode == 2, (ref, done.stderr)
        assert said in done.stderr and done.stderr.count("\n") == 1, done.stderr
