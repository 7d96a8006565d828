"""State that cannot lie: stage state bound to a fingerprint, MLflow runs resumed only with equal params,
champions compared only on the same data."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from op_classifier.stages import train, tune
from op_classifier.tracking import Tracker, TrackingError
from op_classifier.tracking.runs import MlflowTracker
from op_classifier.training import state
from tests.conftest import REPO, compose


def _fp(**params: object) -> dict:
    return state.fingerprint(params, data_hash="d1")


def test_matching_state_is_kept_and_other_state_is_wiped_with_a_note(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "search"
    assert state.claim(folder, _fp(units=64), "tuner search") is False  # nothing to resume yet
    (folder / "trial_0").mkdir()
    assert state.claim(folder, _fp(units=64), "tuner search") is True
    assert (folder / "trial_0").is_dir()

    (folder / "mlflow_run_id").write_text("abc")
    assert state.claim(folder, _fp(units=128), "tuner search", keep=("mlflow_run_id",)) is False
    assert "not resuming the tuner search" in capsys.readouterr().err
    assert not (folder / "trial_0").exists() and (folder / "mlflow_run_id").read_text() == "abc"
    assert state.read(folder)["params"] == {"units": 128}


def test_the_note_names_what_changed(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ckpt"
    state.claim(folder, state.fingerprint({"model.dropout": 0.2, "seed": 1}, "d1"), "training checkpoint")
    (folder / "backup").mkdir()
    state.claim(folder, state.fingerprint({"model.dropout": 0.5, "seed": 1}, "d2"), "training checkpoint")
    err = capsys.readouterr().err
    assert "model.dropout, data changed" in err and "seed" not in err


def test_finished_state_is_not_resumed(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "search"
    state.claim(folder, _fp(units=64), "tuner search")
    (folder / "oracle.json").write_text("{}")
    state.mark_complete(folder)
    assert state.claim(folder, _fp(units=64), "tuner search") is False
    assert "it finished" in capsys.readouterr().err and not (folder / "oracle.json").exists()


def test_finished_names_only_finished_work_of_the_same_fingerprint(tmp_path: Path) -> None:
    folder = tmp_path / "search"
    state.claim(folder, _fp(units=64), "tuner search")
    assert not state.finished(folder, _fp(units=64))  # started, not finished: resumed, not reused
    state.mark_complete(folder)
    assert state.finished(folder, _fp(units=64)) and not state.finished(folder, _fp(units=128))
    assert not state.finished(tmp_path / "none", _fp(units=64))


def test_state_without_a_fingerprint_is_not_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    (folder / "backup").mkdir(parents=True)
    assert state.claim(folder, _fp(units=64), "training checkpoint") is False
    assert not (folder / "backup").exists()


def test_the_code_is_part_of_the_fingerprint() -> None:
    assert _fp(units=64)["code"] == state.code_hash() and len(state.code_hash()) == 16
    assert _fp(units=64)["id"] != state.fingerprint({"units": 64}, data_hash="d2")["id"]


@pytest.mark.parametrize("module,stage", [(tune, "tune"), (train, "train")])
def test_fingerprinted_params_are_the_ones_dvc_yaml_declares(module: object, stage: str) -> None:
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"]
    assert tuple(declared) == module.PARAMS + getattr(module, "REPORT_PARAMS", ())


def _tracker(tmp_path: Path, *overrides: str) -> Tracker:
    cfg = compose(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides).tracking
    return MlflowTracker(cfg)


def _status(tracker: Tracker, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).info.status


def _tags(run_id: str) -> dict[str, str]:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).data.tags


def test_only_a_run_left_unfinished_by_a_kill_is_continued_and_only_with_equal_params(tmp_path: Path) -> None:
    """Every status but FINISHED was resumable: a failed, later-finished or registered run was logged
    into again or closed as KILLED (issue 25). Now only our interrupted or killed runs go on."""
    tracker, resume = _tracker(tmp_path), tmp_path / "ckpt/mlflow_run_id"
    units = {"model.units": 64}
    with pytest.raises(KeyboardInterrupt), tracker.run("train", resume_file=resume, params=units):
        raise KeyboardInterrupt  # Ctrl-C, or the stage's parent gone (a SIGKILL leaves it RUNNING)
    killed = resume.read_text()
    assert _status(tracker, killed) == "KILLED" and _tags(killed)["op_classifier.closed"].startswith("interrupted")
    with tracker.run("train", resume_file=resume, params=units) as same:
        pass
    assert same == killed and _status(tracker, same) == "FINISHED"  # same params: the same run goes on
    with tracker.run("train", resume_file=resume, params=units) as again:
        pass
    assert again != same and _status(tracker, same) == "FINISHED"  # a finished run is never continued

    with pytest.raises(RuntimeError), tracker.run("train", resume_file=resume, params=units):
        raise RuntimeError("a bug")
    failed = resume.read_text()
    assert _status(tracker, failed) == "FAILED"
    assert _tags(failed)["op_classifier.closed"] == "failed" and _tags(failed)["op_classifier.resumable"] == "false"
    with tracker.run("train", resume_file=resume, params=units) as after:
        pass
    assert after != failed and _status(tracker, failed) == "FAILED"  # a failure is not continued, and stays one

    with pytest.raises(KeyboardInterrupt), tracker.run("train", resume_file=resume, params=units):
        raise KeyboardInterrupt
    killed = resume.read_text()
    # Changed config after the kill: MLflow would refuse to change a logged param; a new run starts.
    with tracker.run("train", resume_file=resume, params={"model.units": 128}) as new:
        pass
    assert new != killed and _status(tracker, killed) == "KILLED" and _status(tracker, new) == "FINISHED"
    assert _tags(killed)["op_classifier.closed"] == "not continued: a later run had other params"


def test_a_store_failing_mid_run_is_one_line_and_the_run_ends_failed(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path)
    with pytest.raises(TrackingError, match=r"^MLflow store .* failed \(") as caught:
        with tracker.run("train") as run_id:
            tracker.log_params({"a": 1})
            tracker.log_params({"a": 2})  # the store refuses: not a traceback, one line
    assert "\n" not in str(caught.value)
    assert _status(tracker, run_id) == "FAILED"


class _MlflowLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_champion_moves_only_between_scores_on_the_same_data(tmp_path: Path) -> None:
    import keras

    from op_classifier.models.seed_cnn import build_model

    tracker = _tracker(tmp_path, "tracking.promotion=better")  # any gain: the data rule alone
    model = build_model(num_classes=2, image_size=16, resize=None, seed=0, filters=[4], units=4)
    example = keras.ops.convert_to_numpy(keras.random.uniform((1, 16, 16, 3), 0, 255))

    def register(score: float, data: str) -> dict:
        with tracker.run("train"):
            uri = tracker.log_model(model, example)
        return tracker.register(uri, score, target=0.5, metric="val_accuracy", data_hash=data)

    seen = _MlflowLog()
    logging.getLogger("mlflow").addHandler(seen)
    try:
        assert register(0.80, "split-a")["champion"]
    finally:
        logging.getLogger("mlflow").removeHandler(seen)
    assert not [line for line in seen.lines if "no artifacts" in line], seen.lines  # no alarming note to the user
    other_split = register(0.95, "split-b")  # a higher score on another split means nothing
    assert not other_split["champion"] and "other data" in other_split["champion_reason"]
    assert not register(0.70, "split-a")["champion"]
    assert register(0.90, "split-a")["champion"]

    import mlflow

    champion = mlflow.MlflowClient().get_model_version_by_alias("op-classifier", "champion")
    assert str(champion.version) == "4" and champion.tags["data_hash"] == "split-a"


def test_tracking_none_is_a_null_tracker_that_records_nothing(tmp_path: Path) -> None:
    from op_classifier.tracking import NullTracker, make_tracker

    cfg = compose("tracking=none", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}").tracking
    tracker = make_tracker(cfg)
    assert isinstance(tracker, NullTracker) and cfg.kind == "none"
    with tracker.run("train", resume_file=tmp_path / "run_id", params={"a": 1}) as run_id:
        tracker.log_metrics({"val_accuracy": 0.5})
        with tracker.trial("0", {"units": 32}):
            pass
        assert tracker.log_model(None, None) is None  # type: ignore[arg-type]
    assert run_id is None and tracker.register("runs:/x/model", 1.0, 0.5, "val_accuracy") == {}
    assert list(tmp_path.iterdir()) == []  # no store, no run file: nothing was recorded


def test_an_unknown_tracker_kind_is_a_config_error() -> None:
    from op_classifier.config import ConfigError

    with pytest.raises(ConfigError, match="tracking.kind: 'wandb' is not one of mlflow, none"):
        compose("tracking.kind=wandb")


def _package_copy(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(Path(state.__file__).resolve().parents[1], source / "op_classifier")
    return source


@pytest.mark.parametrize("stage", ["tune", "train"])
def test_a_stage_keeps_its_state_when_code_it_never_runs_changes(stage: str, tmp_path: Path) -> None:
    """Editing serving (no stage of training runs it) keeps a search or checkpoint; editing hparams does not."""
    source = _package_copy(tmp_path)
    module = f"op_classifier.stages.{stage}"
    before = state.code_hash(module, source)
    with (source / "op_classifier/serving/serve.py").open("a") as handle:
        handle.write("\n# an edit to the server\n")
    assert state.code_hash(module, source) == before
    with (source / "op_classifier/training/hparams.py").open("a") as handle:
        handle.write("\n# an edit to the hyperparameters' code\n")
    assert state.code_hash(module, source) != before


def test_the_stages_fingerprint_their_own_code() -> None:
    assert tune.STAGE == tune.__spec__.name and train.STAGE == train.__spec__.name
