"""Training and evaluation under hostile input: no NaN model, a full disk is one line, true messages
(issue 35, cases 4, 13 and 18)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from op_classifier.errors import ConfigError, DataError
from op_classifier.stages import evaluate, train, tune
from op_classifier.training.callbacks import Diverged
from tests.conftest import DATA, REPO, compose, mlflow_client, paths_under, tiny_cfg

CLI = str(Path(sys.executable).parent / "op-classifier")


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The tiny sample prepared, once for this module (conftest.tiny_project)."""
    return tiny_project


def _runs(root: Path, stage: str) -> list:
    client = mlflow_client(root)
    return client.search_runs([client.get_experiment_by_name("op-classifier").experiment_id], f"tags.stage = '{stage}'")


def test_a_diverging_training_stops_at_its_first_nan_epoch_and_keeps_nothing(project: Path, tmp_path: Path) -> None:
    """Case 4: train.learning_rate=1e6 logged `loss nan` every epoch, exited 0 and saved the model."""
    moved = [*paths_under(tmp_path, skip=DATA), f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    cfg = tiny_cfg(project, "tuner=none", "train.learning_rate=1e6", "train.epochs=3", *moved)
    tune.run(cfg)
    with pytest.raises(Diverged, match=r"^epoch 1: .*nan.*: the training diverged"):
        train.run(cfg)
    assert not (Path(cfg.paths.model) / "model.keras").exists()
    assert not (Path(cfg.paths.checkpoints) / "backup").exists()  # no backup of a NaN epoch to resume from
    assert not Path(cfg.paths.history).exists()
    (run,) = _runs(tmp_path, "train")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_evaluate_refuses_a_model_answering_nan_and_registers_nothing(project: Path, tmp_path: Path) -> None:
    """Case 4: a NaN model was evaluated (exit 0) and registered as a version."""
    import keras

    moved = [*paths_under(tmp_path, skip=DATA), f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    cfg = tiny_cfg(project, "tuner=none", "train.epochs=1", *moved)
    tune.run(cfg)
    train.run(cfg)
    keras_file = Path(cfg.paths.model) / "model.keras"
    model = keras.saving.load_model(keras_file, compile=False)
    model.layers[-1].set_weights([np.full_like(w, np.nan) for w in model.layers[-1].get_weights()])
    model.save(keras_file)
    with pytest.raises(DataError, match=r"answers NaN or infinity for \d+ val image\(s\): it is broken"):
        evaluate.run(cfg)
    assert not Path(cfg.paths.metrics).exists()
    assert mlflow_client(tmp_path).search_registered_models() == []


@pytest.mark.slow
def test_a_truncated_model_file_says_so(project: Path, tmp_path: Path) -> None:
    """Case 18: a truncated model.keras gave Keras's "File not found" from evaluate and predict."""
    from op_classifier.models.common.saving import load_model

    whole = tmp_path / "whole.keras"
    _tiny_model().save(whole)
    cut = tmp_path / "model" / "model.keras"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"model.keras: not a whole Keras model file \(.*\): truncated or damaged\?$"):
        load_model(cut)
    (cut.parent / "run.json").write_text('{"classes": ["a", "b"], "image_size": 8}')
    image = tmp_path / "one.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    done = subprocess.run([CLI, "predict", str(image), "--model", str(cut.parent)], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "not a whole Keras model file" in done.stderr and "File not found" not in done.stderr


def _tiny_model():
    import keras

    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("/etc/passwd", "model.weights: /etc/passwd is not a Keras weights file"),
        ("data/weights/missing.weights.h5", "model.weights: no file data/weights/missing.weights.h5"),
    ],
)
def test_a_weights_path_that_is_no_weights_file_says_what_is_wrong(weights: str, message: str) -> None:
    """Case 18: model.weights=/etc/passwd said "no file /etc/passwd"."""
    with pytest.raises(ConfigError, match=f"^{message}"):
        compose("model=efficientnet_lite0", f"model.weights={weights}")


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"]).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -rm` (a user and mount namespace) for a small disk")
def test_a_full_disk_during_training_is_one_line_and_the_run_ends_failed(project: Path, tmp_path: Path) -> None:
    """Case 13: a full disk ended the training in a segmentation fault after h5py and sqlite tracebacks,
    a half-written partial.weights.h5 left and the run RUNNING."""
    shutil.copytree(REPO / "conf", tmp_path / "conf", dirs_exist_ok=True)
    small = tmp_path / "small"
    small.mkdir()
    moved = [
        f"paths.{key}={project / key_path}" for key, key_path in (("raw", "data/raw"), ("prepared", "data/prepared"))
    ]
    others = [f"paths.{key}={tmp_path / 'out' / key}" for key in ("tuning", "best_hparams", "leaderboard", "model")]
    args = [
        "experiment=tiny",
        "tuner=none",
        "train.epochs=2",
        *moved,
        *others,
        f"paths.checkpoints={small / 'checkpoints'}",
        f"paths.history={tmp_path / 'out' / 'history.csv'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    tune.run(compose(*args))
    # a 200 KiB disk holds the checkpoint's fingerprint and history, not its weights
    train = f"{CLI} train " + " ".join(f"'{a}'" for a in args)
    script = f"mount -t tmpfs -o size=200k tmpfs {small} || exit 9; {train}; code=$?; find {small} -type f; exit $code"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "partial" not in done.stdout and "fingerprint.json" in done.stdout  # no half-written file left
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write the checkpoint "), errors
    assert "No space left on device" in errors[0]
    (run,) = _runs(tmp_path, "train")
    assert run.info.status == "FAILED"
