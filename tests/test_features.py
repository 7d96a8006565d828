"""A pretrained model's head on its frozen backbone's features: the head phase, the search of the head alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from op_classifier.data.prepared import load_split, top1
from op_classifier.stages import train, tune
from op_classifier.training import features, hparams, tuners
from op_classifier.training.hypermodel import candidates
from tests.conftest import DATA, compose, mlflow_client, paths_under, tiny_cfg

LITE = ("model=efficientnet_lite0", "model.resize=32", "train.warmup_epochs=0", "train.fine_tune_epochs=0")


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The tiny sample prepared, once for this module (conftest.tiny_project)."""
    return tiny_project


@pytest.fixture
def feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "feature-cache"))


def test_the_head_phase_on_features_trains_the_models_own_head(project: Path, tmp_path: Path, feature_cache) -> None:
    """Trained on features computed once, the saved model (raw pixels in) scores on the val images
    exactly what the head phase reported for its restored best epoch; the backbone is untouched."""
    import keras

    cfg = tiny_cfg(project, *LITE, "tuner=none", "train.epochs=4", "tracking=none", *paths_under(tmp_path, skip=DATA))
    tune.run(cfg)
    summary = train.run(cfg)
    assert summary["epochs_run"] == 4 and "fine_tune_epochs_run" not in summary
    model = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False)
    val = load_split(Path(cfg.paths.prepared), "val")
    probs = model.predict(np.asarray(val.images, dtype="float32"), verbose=0)
    history = np.genfromtxt(cfg.paths.history, delimiter=",", names=True)
    assert top1(val.labels, probs) == pytest.approx(history["val_accuracy"].max(), abs=1e-6)
    assert len(history) == 4 and not model.get_layer("backbone").trainable_weights


@pytest.mark.slow
def test_a_search_of_the_head_alone_runs_on_features_with_a_line_and_a_run_per_trial(
    project: Path, tmp_path: Path, feature_cache, capsys: pytest.CaptureFixture[str]
) -> None:
    """tuner=random on a pretrained model: each trial is the head phase on the features (seconds), one
    printed line and one nested MLflow run each; train takes the pick."""
    moved = paths_under(tmp_path, skip=DATA)
    cfg = tiny_cfg(project, *LITE, "tuner=random", "tuner.max_trials=3", "train.epochs=3", *moved)
    assert hparams.searches_head(cfg)
    summary = tune.run(cfg)
    assert summary["trials"] == 3 and set(summary["best"]) == {"learning_rate", "dropout"}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and all(" -> val_accuracy " in line for line in lines)
    assert "Epoch 1/" not in capsys.readouterr().out  # no per-epoch wall for a seconds-long trial
    client = mlflow_client(project)
    (search,) = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        f"tags.stage = 'tune' and params.state_fingerprint = '{tuners.fingerprint(cfg, candidates(cfg)[0], tune.STAGE)['id']}'",
    )
    trials = client.search_runs([search.info.experiment_id], f"tags.`mlflow.parentRunId` = '{search.info.run_id}'")
    assert len(trials) == 3 and all({"val_accuracy", "epoch_val_accuracy"} <= set(t.data.metrics) for t in trials)
    trained = train.run(cfg)
    params = client.get_run(trained["run_id"]).data.params
    assert float(params["learning_rate_used"]) == pytest.approx(summary["best"]["learning_rate"])


def test_the_head_search_depends_on_train_and_a_pixel_search_does_not() -> None:
    """A head's trials train as train's head phase: changing train.* makes it another search; a
    from-scratch search keeps its result when only the final training changes."""
    head = compose(*LITE, "tuner=random")
    pixels = compose("model=resnet", "tuner=random")
    assert hparams.searches_head(head) and not hparams.searches_head(pixels)
    assert "train.epochs" in hparams.search_params(head) and "train.epochs" not in hparams.search_params(pixels)
    assert "train.fine_tune_epochs" not in hparams.search_params(head)  # the fine-tuning does not change the search
    assert not hparams.searches_head(
        compose(*LITE, "tuner=random", "+tuner.search_space.zoom={type: float, min: 0.0, max: 0.2}")
    )
    assert not hparams.searches_head(compose(*LITE, "tuner=none"))


def test_feature_batches_are_drawn_from_the_seed_and_change_each_epoch() -> None:
    data = features.Features(np.arange(20, dtype="float32").reshape(10, 2), np.eye(2)[np.arange(10) % 2])
    one, two = features.FeatureStream(data, 4, seed=3), features.FeatureStream(data, 4, seed=3)
    assert len(one) == 3 and all(np.array_equal(one[i][0], two[i][0]) for i in range(3))
    first = np.concatenate([one[i][0] for i in range(3)])
    one.on_epoch_end()
    second = np.concatenate([one[i][0] for i in range(3)])
    assert not np.array_equal(first, second) and sorted(first[:, 0]) == sorted(second[:, 0])


def test_the_feature_cache_drops_its_least_recently_used_entries_beyond_its_size(tmp_path: Path) -> None:
    """Entries are pruned oldest-use first once the folder exceeds its limit; the newest always stays."""
    import os

    for age, name in enumerate(("new", "used", "old", "older")):
        (tmp_path / f"{name}.npz").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{name}.npz", (1e9 - age, 1e9 - age))
    (tmp_path / "other.txt").write_bytes(b"x" * 1000)  # not an entry: never touched
    (tmp_path / "k.123.partial.npz").write_bytes(b"x" * 1000)  # another process's write in progress
    os.utime(tmp_path / "k.123.partial.npz", (1, 1))
    deleted = features.prune(tmp_path, 250)
    assert sorted(p.name for p in deleted) == ["old.npz", "older.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.123.partial.npz", "new.npz", "other.txt", "used.npz"]
    assert [p.name for p in features.prune(tmp_path, 10)] == ["used.npz"]  # the newest stays
