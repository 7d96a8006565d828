"""Architectures through tune and train: the registry, presets, architecture search, backbones and weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from op_classifier import models
from op_classifier.config import Config, ConfigError
from op_classifier.errors import DataError
from op_classifier.stages import train, tune
from op_classifier.training import hparams, recipe
from op_classifier.training.build import build
from op_classifier.weights.pytorch import read_state_dict
from tests.conftest import DATA, REPO, compose, mlflow_client, paths_under, tiny_cfg


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The tiny sample prepared, once for this module (conftest.tiny_project)."""
    return tiny_project


def test_seed_cnn_is_the_original_network_unchanged() -> None:
    """Layers, parameter count and outputs as model.py built them before the registry (same seed)."""
    import keras

    keras.utils.set_random_seed(0)
    model = models.get("seed_cnn").build(4, 180, resize=96, seed=0)
    assert model.count_params() == 789884
    assert [layer.__class__.__name__ for layer in model.layers] == [
        *("InputLayer", "Resizing", "Rescaling", "RandomFlip", "RandomRotation", "RandomZoom"),
        *("Conv2D", "BatchNormalization", "MaxPooling2D", "BatchNormalization"),
        *("Conv2D", "MaxPooling2D", "BatchNormalization", "Conv2D", "MaxPooling2D", "BatchNormalization"),
        *("Flatten", "Dense", "Dropout", "Dense"),
    ]
    pixels = np.random.default_rng(0).integers(0, 255, (2, 180, 180, 3)).astype("float32")
    expected = [[0.495511, 0.442982, 0.462578, 0.455308], [0.494951, 0.43246, 0.463313, 0.45634]]
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=1e-5)


@pytest.mark.slow
def test_model_name_picks_the_builder_in_tune_and_train(project: Path, tmp_path: Path) -> None:
    """model=seed_cnn (the default is resnet): the search and the final training both build the
    original's CNN, here under the default recipe's AdamW, cosine schedule and label smoothing."""
    moved = paths_under(tmp_path, skip=DATA)
    cfg = tiny_cfg(project, "model=seed_cnn", "model.resize=null", "tuner.max_trials=1", *moved)
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.train.label_smoothing) == ("adamw", "cosine", 0.1)
    tuned = tune.run(cfg)
    assert set(tuned["best"]) == {"units", "learning_rate"}
    train.run(cfg)
    import keras

    model = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False)
    assert model.name == "seed_cnn"
    assert any(layer.__class__.__name__ == "Flatten" for layer in model.layers)
    rates = [float(row.split(",")[-1]) for row in Path(cfg.paths.history).read_text().splitlines()[1:]]
    assert rates[0] > rates[1]  # the cosine schedule decays the learning rate every step


def _leaderboard(cfg: Config) -> list[dict[str, str]]:
    import csv

    with open(cfg.paths.leaderboard, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


PRESETS = sorted(path.stem for path in (REPO / "conf/experiment").glob("*.yaml") if path.stem != "tiny")
SMOKE_BUDGET = (  # the tiny project's 32-pixel data, one-epoch trials, 4 training epochs (past a warm-up)
    "data.image_size=32",
    "model.resize=null",
    "tuner.max_trials=1",
    "tuner.epochs=1",
    "tuner.max_epochs=2",
    "train.epochs=4",
)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_runs_tune_and_train(project: Path, tmp_path: Path, preset: str) -> None:
    """Each conf/experiment file (tiny is every other test's) composes and trains on the tiny project."""
    moved = [*paths_under(project), *paths_under(tmp_path, skip=DATA)]  # the project's data, the rest in tmp_path
    store = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(f"experiment={preset}", *SMOKE_BUDGET, *moved, store)
    tune.run(cfg)
    trained = train.run(cfg)
    assert trained["epochs_run"] == 4
    assert (Path(cfg.paths.model) / "model.keras").is_file()


@pytest.mark.slow  # the default suite searches architectures in the architecture_search preset's test
def test_the_search_picks_the_architecture_with_a_sub_space_each(project: Path, tmp_path: Path) -> None:
    """tuner.search_space.name: each trial draws an architecture and only that one's own entries."""
    moved = paths_under(tmp_path, skip=DATA)
    choice = "+tuner.search_space.name={type: choice, values: [seed_cnn, resnet]}"
    cfg = tiny_cfg(project, choice, "tuner.max_trials=4", "train.epochs=1", *moved)
    tuned = tune.run(cfg)
    rows = _leaderboard(cfg)
    assert {row["name"] for row in rows} == {"seed_cnn", "resnet"}  # seeded: both drawn in 4 trials
    for row in rows:
        own = {key for key, value in row.items() if "." in key and value}
        assert own == ({"resnet.dropout"} if row["name"] == "resnet" else {"seed_cnn.units"})
    best = hparams.read_best(Path(cfg.paths.best_hparams))
    drawn = tuned["best"]["name"]
    assert best["architecture"]["name"] == drawn and set(tuned["best"]) == {
        "name",
        "learning_rate",
        "dropout" if drawn == "resnet" else "units",
    }
    train.run(cfg)
    import keras

    model = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False)
    assert model.name == drawn


@pytest.mark.slow
def test_a_searched_architecture_other_than_model_name_is_what_train_builds(project: Path, tmp_path: Path) -> None:
    """model.name is resnet, the search may only draw seed_cnn: seed_cnn's conf/model section is trained."""
    moved = paths_under(tmp_path, skip=DATA)
    cfg = tiny_cfg(project, "+tuner.search_space.name={type: choice, values: [seed_cnn]}", "tuner.max_trials=1", *moved)
    assert cfg.model.name == "resnet"
    tuned = tune.run(cfg)
    assert tuned["best"]["name"] == "seed_cnn" and "dropout" not in tuned["best"]
    record = hparams.read_best(Path(cfg.paths.best_hparams))
    assert record["architecture"]["filters"] == compose("model=seed_cnn").model.filters  # from its conf/model file
    summary = train.run(cfg)
    import keras

    model = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False)
    assert model.name == "seed_cnn" and summary["epochs_run"] == 2
    run_id = json.loads((Path(cfg.paths.model) / "run.json").read_text())["run_id"]
    params = mlflow_client(project).get_run(run_id).data.params
    assert params["architecture_used"] == "seed_cnn" and params["model.name"] == "resnet"


@pytest.mark.slow
def test_train_refuses_tuned_values_from_another_search(project: Path, tmp_path: Path) -> None:
    """Stage by stage, a search made with other settings does not hand its values to this config."""
    moved = paths_under(tmp_path, skip=DATA)
    cfg = tiny_cfg(project, "tuner.max_trials=1", *moved)
    assert "dropout" in tune.run(cfg)["best"]
    for change, named in (("model.dropout=0.3", "model.dropout"), ("tuner.epochs=2", "tuner.epochs")):
        with pytest.raises(DataError, match=rf"best_hparams.yaml comes from another search \({named} changed since\)"):
            train.run(tiny_cfg(project, "tuner.max_trials=1", *moved, change))
    assert not Path(cfg.paths.model).exists()  # nothing trained
    same = hparams.read_best(Path(cfg.paths.best_hparams), hparams.search_record(cfg))  # the config that searched
    assert "dropout" in same["values"]


def test_an_architecture_choice_names_registered_architectures_only(project: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"tuner.search_space.name.values: unknown architecture 'vgg' \(an architecture: "
    ):
        tiny_cfg(project, "+tuner.search_space.name={type: choice, values: [seed_cnn, vgg]}")
    with pytest.raises(ConfigError, match="tuner.search_space.name.type: the architecture is a choice, not bool"):
        tiny_cfg(project, "+tuner.search_space.name={type: bool}")


def test_cosine_schedule_warms_up_then_decays_to_a_hundredth() -> None:
    cfg = compose("train.schedule=cosine", "train.epochs=10", "train.warmup_epochs=2").train
    schedule = recipe.learning_rate_schedule(cfg, 1e-2, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(10)) == pytest.approx(1e-2)
    assert float(schedule(50)) == pytest.approx(1e-4)
    assert recipe.learning_rate_schedule(compose("train.schedule=plateau").train, 1e-2, 5) == 1e-2  # a constant


@pytest.mark.slow
def test_tuner_none_leaves_the_outputs_dvc_expects(project: Path, tmp_path: Path, capsys) -> None:
    """dvc.yaml declares the search folder, best_hparams.yaml and the leaderboard: all three exist, the
    folder not empty (DVC warned on every run), and no earlier search in it passes for this config's."""
    moved = [f"paths.{key}={tmp_path / key}" for key in ("tuning", "best_hparams", "leaderboard")]
    tune.run(tiny_cfg(project, "tuner.max_trials=1", "tracking=none", *moved))  # a random search first
    assert any(Path(tmp_path / "tuning").glob("trial_*"))
    capsys.readouterr()
    cfg = tiny_cfg(project, "tuner=none", *moved)
    summary = tune.run(cfg)
    assert (summary["tuner"], summary["best"], summary["did"]) == ("none", {}, "no search (tuner=none)")
    assert "tuner=none searches nothing" in capsys.readouterr().err
    assert [p.name for p in Path(cfg.paths.tuning).iterdir()] == ["fingerprint.json"]  # the search is gone
    assert Path(cfg.paths.leaderboard).is_file()
    assert hparams.read_best(Path(cfg.paths.best_hparams))["values"] == {}
    tune.run(cfg)
    assert capsys.readouterr().err == ""  # again: nothing to say


def _backbone_file(folder: Path, side: int) -> Path:
    """A MobileNetV3Small backbone's weights file, as a user would bring one (random here: offline)."""
    import keras

    keras.utils.set_random_seed(7)
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(side, side, 3), include_top=False, weights=None, include_preprocessing=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backbone.weights.h5"
    backbone.save_weights(path)
    return path


@pytest.mark.slow  # the default suite fine-tunes a backbone in the EfficientNet-Lite test below
def test_a_backbone_from_a_weights_file_trains_its_head_then_fine_tunes_its_top(project: Path, tmp_path: Path) -> None:
    """Phase one trains the head on the frozen backbone; phase two unfreezes its top layers, BatchNorm
    excepted: the bottom keeps the file's weights, the top moves, BatchNorm statistics stay the file's."""
    import keras

    moved = paths_under(tmp_path, skip=DATA)
    weights = _backbone_file(tmp_path / compose().paths.weights, 32)  # under paths.weights, as the schema asks
    cfg = tiny_cfg(
        project,
        *("model=mobilenet_v3_small", f"model.weights={weights}", "model.resize=null", "tuner=none"),
        *("train.epochs=1", "train.fine_tune_epochs=1", "train.fine_tune_layers=8", "tracking=none", *moved),
    )
    tune.run(cfg)
    summary = train.run(cfg)
    assert summary["epochs_run"] == 1 and summary["fine_tune_epochs_run"] == 1
    trained = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False).get_layer("backbone")
    original = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=str(weights), include_preprocessing=True
    )
    moved_layers = {
        layer.name
        for layer, before in zip(trained.layers, original.layers)
        if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before.get_weights()))
    }
    top = {layer.name for layer in original.layers[-8:] if layer.weights}
    assert moved_layers and moved_layers <= top  # only the unfrozen top moved...
    assert not any(isinstance(original.get_layer(name), keras.layers.BatchNormalization) for name in moved_layers)


@pytest.mark.slow
def test_efficientnet_lite_starts_from_the_installed_imagenet_weights_and_fine_tunes(
    project: Path, tmp_path: Path, monkeypatch
) -> None:
    """model=efficientnet_lite0 offline: ImageNet weights from the installed package, the head's phase on the
    frozen backbone, then the top layers; the model saved takes raw pixels and keeps the bottom's weights."""
    import keras

    from op_classifier.training import features
    from op_classifier.weights import imagenet

    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
    cfg = tiny_cfg(
        project,
        *("model=efficientnet_lite0", "model.resize=32", "tuner=none", "train.epochs=1", "train.warmup_epochs=0"),
        *("train.fine_tune_epochs=1", "train.fine_tune_layers=10", "tracking=none", *paths_under(tmp_path, skip=DATA)),
    )
    tune.run(cfg)
    summary = train.run(cfg)
    assert summary["epochs_run"] == 1 and summary["fine_tune_epochs_run"] == 1
    model = keras.saving.load_model(Path(cfg.paths.model) / "model.keras", compile=False)
    backbone = model.get_layer("backbone")
    stem = np.asarray(backbone.get_layer("stem_conv").kernel)
    imagenet_stem = read_state_dict(imagenet.checkpoint(1.0, 1.0))["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(stem, imagenet_stem)  # below the unfrozen top: ImageNet's, untouched
    top = np.asarray(backbone.get_layer("top_conv").kernel)
    assert not np.array_equal(
        top, read_state_dict(imagenet.checkpoint(1.0, 1.0))["_conv_head.weight"].transpose(2, 3, 1, 0)
    )
    probabilities = model.predict(np.full((2, cfg.data.image_size, cfg.data.image_size, 3), 200.0), verbose=0)
    assert probabilities.shape == (2, 4) and np.all((probabilities >= 0) & (probabilities <= 1))


def test_imagenet_weights_offline_is_one_line_naming_the_alternatives(project: Path, monkeypatch) -> None:
    from keras.src.utils import file_utils

    def offline(*args: object, **kwargs: object) -> None:  # what Keras raises without a network (measured here)
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service")

    monkeypatch.setattr(file_utils, "get_file", offline)
    cfg = tiny_cfg(project, "model=mobilenet_v3_small", "model.weights=imagenet", "model.resize=null", "tuner=none")
    with pytest.raises(ConfigError, match=r"^model.weights=imagenet: the ImageNet weights cannot be downloaded .*null"):
        build(cfg, ["a", "b"], {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=efficientnet_v2_b0", "model.weights=missing.weights.h5"), "model.weights: no file missing.weights.h5"),
        (
            ("model=mobilenet_v3_small", "model.resize=16"),
            "model.resize: mobilenet_v3_small takes images of at least 32",
        ),
        (
            ("model=mobilenet_v3_small", "model.resize=null", "data.image_size=24"),
            "data.image_size: mobilenet_v3_small",
        ),
    ],
)
def test_backbone_config_errors_name_the_key(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(*overrides)


def test_our_multi_label_auc_counts_exactly_as_keras_does() -> None:
    """MultiLabelAUC replaces Keras's AUC in training (no boolean tensors for oneDNN to log about):
    its confusion counts and result equal Keras's, batch after batch."""
    import keras

    from op_classifier.models.common.metrics import MultiLabelAUC

    rng = np.random.default_rng(0)
    truth = (rng.random((300, 4)) < 0.3).astype("float32")
    scores = rng.random((300, 4)).astype("float32")
    scores[:20] = np.round(scores[:20], 1)  # values on bucket edges too
    theirs, ours = keras.metrics.AUC(multi_label=True), MultiLabelAUC()
    for start in range(0, 300, 64):
        theirs.update_state(truth[start : start + 64], scores[start : start + 64])
        ours.update_state(truth[start : start + 64], scores[start : start + 64])
    for kept, made in zip(theirs.variables, ours.variables):
        assert np.allclose(np.asarray(kept), np.asarray(made)), kept.name
    assert float(ours.result()) == pytest.approx(float(theirs.result()), abs=1e-6)
    assert 0.4 < float(ours.result()) < 0.6  # random scores
    clone = MultiLabelAUC.from_config(ours.get_config())
    assert clone.multi_label and clone.name == ours.name


@pytest.mark.parametrize(
    ("side", "kernel", "stride", "padding"),
    [(9, 3, 1, "same"), (9, 3, 2, "same"), (10, 5, 2, "same"), (8, 5, 1, "same"), (11, 3, 2, "valid")],
)
def test_the_shifted_depthwise_convolution_is_keras_s_own(side: int, kernel: int, stride: int, padding: str) -> None:
    """What JAX on a CPU runs in EfficientNet-Lite's blocks gives Keras's depthwise output, odd and even
    sides, both strides: TensorFlow's asymmetric "same" padding included."""
    from keras import ops

    from op_classifier.models.common.convolutions import shifted_depthwise

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, side, side + 1, 6)).astype("float32")
    k = rng.normal(size=(kernel, kernel, 6, 1)).astype("float32")
    expected = ops.convert_to_numpy(ops.depthwise_conv(x, k, strides=stride, padding=padding))
    got = ops.convert_to_numpy(
        shifted_depthwise(ops.convert_to_tensor(x), ops.convert_to_tensor(k), (stride, stride), padding)
    )
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
