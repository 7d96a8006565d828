"""The config flow: conf/ -> params.yaml -> typed, validated config; errors name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from op_classifier import config
from op_classifier.defaults import MAX_IMAGE_PIXELS
from op_classifier.errors import ConfigError
from tests.conftest import REPO, compose

CLI = str(Path(sys.executable).parent / "op-classifier")


def test_committed_params_match_a_fresh_composition(tmp_path: Path) -> None:
    """A stale params.yaml would make `dvc repro` run another config than conf/ says."""
    from dvc.utils.hydra import compose_and_dump

    fresh = tmp_path / "params.yaml"
    compose_and_dump(fresh, str(REPO / "conf"), None, "config", str(tmp_path), [])
    committed = (REPO / "params.yaml").read_text(encoding="utf-8")
    assert committed == fresh.read_text(encoding="utf-8"), "params.yaml is stale: run `op-classifier compose`"


def test_our_composition_writes_what_dvc_writes(tmp_path: Path) -> None:
    from dvc.utils.hydra import compose_and_dump

    overrides = ["data.val_fraction=0.25", "train.epochs=5"]
    compose_and_dump(tmp_path / "dvc.yaml", str(REPO / "conf"), None, "config", str(tmp_path), overrides)
    ours = config.to_yaml(config.compose(tuple(overrides), conf_dir=REPO / "conf"))
    assert ours == (tmp_path / "dvc.yaml").read_text(encoding="utf-8")


def test_composed_config_is_typed() -> None:
    cfg = compose("data.val_fraction=0.25", "seed=7")
    assert isinstance(cfg.data, config.DataConfig)
    assert cfg.data.val_fraction == 0.25 and cfg.seed == 7
    assert cfg.data.classes == ["Luffy", "Nami", "Sanji", "Zoro"]
    assert cfg.model.name == "efficientnet_lite" and cfg.tuner.kind == "random" and cfg.train.optimizer == "adamw"
    # the model file's list replaces the tuner file's (lists are not merged)
    assert cfg.tuner.search_space["learning_rate"].values == [3e-2, 1e-2, 3e-3, 1e-3, 3e-4]
    assert compose("model=resnet").tuner.search_space["learning_rate"].values == [1e-2, 1e-3, 1e-4]


def test_prepare_refuses_what_predict_and_serve_refuse() -> None:
    # predict and serve read no project config: their limit is the default prepare composes to.
    assert compose().data.max_image_pixels == MAX_IMAGE_PIXELS


def test_params_yaml_validates() -> None:
    cfg = config.load_params(REPO / "params.yaml")
    assert cfg.paths.prepared == "data/prepared"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.nope=1", "data.nope: unknown key"),
        ("+data.extra=1", "data.extra: unknown key"),
        ("data.val_fraction=abc", "data.val_fraction: Value 'abc'"),
        ("seed=x", "seed: Value 'x'"),
        ("data.val_fraction=1.5", "data.val_fraction: must be between 0 and 1"),
        ("data.classes=[A]", "data.classes: needs at least two classes"),
        ("model=nope", "model/nope"),
        (
            "model.name=nope",
            "model.name: unknown architecture 'nope' \\(known: efficientnet_lite, efficientnet_v2_b0, mobilenet_v3_small, resnet, seed_cnn\\)",
        ),
        ("model.units=64", "model.units: unknown key"),  # a key of another architecture (seed_cnn)
        ("train.optimizer=sgd", "train.optimizer: must be adam or adamw"),
        ("train.warmup_epochs=40", "train.warmup_epochs: must be below train.epochs \\(20\\) for the cosine schedule"),
        (
            "train.warmup_epochs=20",
            "train.warmup_epochs: must be below train.epochs \\(20\\) for the cosine schedule, got 20",
        ),
        ("train.warmup_epochs=-1", "train.warmup_epochs: must be at least 0, got -1"),
    ],
)
def test_bad_override_is_an_error_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        compose(override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # The cases: each ended in a Keras traceback, or only once training started, or never.
        ("model.dropout=2", "model.dropout: must be at least 0 and below 1, got 2"),
        ("model.units=0", "model.units: must be at least 1, got 0"),
        ("train.patience=-3", "train.patience: must be at least 0, got -3"),
        ("tuner.batch_size=0", "tuner.batch_size: must be at least 1, got 0"),
        ("model.filters=[]", "model.filters: must be a non-empty list of integers, each at least 1, got []"),
        ("tracking.champion_target=5", "tracking.champion_target: must be between 0 and 1, got 5"),
        (
            "train.monitor=bogus",
            "train.monitor: the model does not report 'bogus' (it reports loss, accuracy, auc, precision_Luffy,",
        ),
        # Every other numeric key has its range too.
        ("seed=-1", "seed: must be between 0 and 4294967295, got -1"),
        ("data.image_size=4", "data.image_size: must be between 8 and 4096, got 4"),
        ("data.max_image_pixels=0", "data.max_image_pixels: must be at least 1, got 0"),
        ("model.filters=[15,0]", "model.filters: must be a non-empty list of integers, each at least 1, got [15, 0]"),
        ("model.kernel_size=0", "model.kernel_size: must be at least 1, got 0"),
        ("model.l2=-0.1", "model.l2: must be at least 0, got -0.1"),
        ("model.resize=4", "model.resize: must be null or between 8 and 4096, got 4"),
        ("model.augment.rotation=1.5", "model.augment.rotation: must be between 0 and 1, got 1.5"),
        ("model.augment.zoom=-0.1", "model.augment.zoom: must be between 0 and 1, got -0.1"),
        ("train.learning_rate=0", "train.learning_rate: must be positive, got 0"),
        # Infinity passed "positive" and trained to a NaN loss with exit 0 (issue 25); NaN is no number either.
        ("train.learning_rate=inf", "train.learning_rate: must be a finite number, got inf"),
        ("model.dropout=nan", "model.dropout: must be a finite number, got nan"),
        ("tuner.search_space.units.max=inf", "tuner.search_space.units.max: must be a finite number, got inf"),
        ("tuner.search_space.learning_rate.values=[0.01,-inf]", "tuner.search_space.learning_rate.values[1]: must be"),
        # MLflow refused it only when evaluate registered the model, after the whole training (issue 25).
        ("tracking.model_name=a/b", "tracking.model_name: 'a/b' cannot be a registered model's name"),
        ("tracking.model_name=a:b", "tracking.model_name: 'a:b' cannot be a registered model's name"),
        ("train.lr_patience=-1", "train.lr_patience: must be at least 0, got -1"),
        ("train.lr_factor=0", "train.lr_factor: must be above 0 and at most 1, got 0"),
        ("tuner.patience=-1", "tuner.patience: must be at least 0, got -1"),
        ("tuner.learning_rate=0", "tuner.learning_rate: must be positive, got 0"),
        ("tuner.factor=1", "tuner.factor: must be at least 2, got 1"),
        ("tuner.objective=val_f1", "tuner.objective: the model does not report 'val_f1'"),
        ("tuner.objective=val_loss", "tuner.direction: must be min for objective val_loss, got max"),
        # The model must build: 8 pixels do not survive three conv blocks.
        ("model.resize=8", "model.filters: 3 conv blocks of kernel_size 3 leave nothing of a 8-pixel input"),
        # The search space only draws values the model takes.
        ("tuner.search_space.units.min=-32", "tuner.search_space.units.min: must be at least 1, got -32"),
        ("tuner.search_space.units.max=16", "tuner.search_space.units: min (32) is above max (16)"),
        ("tuner.search_space.units.step=0", "tuner.search_space.units.step: must be positive, got 0"),
        (
            "+tuner.search_space.l2={type: float, min: 0, max: 0.1, sampling: log}",
            "tuner.search_space.l2.min: must be positive for sampling log, got 0",
        ),
        ("tuner.search_space.units.min=32.5", "tuner.search_space.units.min: must be whole for type int, got 32.5"),
        ("tuner.search_space.units.type=float", "tuner.search_space.units.type: units takes int or choice, not float"),
        (
            "tuner.search_space.learning_rate.values=[0.01,0]",
            "tuner.search_space.learning_rate.values: must be positive, got 0",
        ),
        (
            "+tuner.search_space.dropout={type: float, min: 0.1, max: 1.5}",
            "tuner.search_space.dropout.max: must be at least 0 and below 1, got 1.5",
        ),
        (
            "+tuner.search_space.kernel_size={type: int, min: 3, max: 40}",
            "tuner.search_space.kernel_size: 3 conv blocks of kernel_size 40 leave nothing of a 64-pixel input",
        ),
        (
            "+tuner.search_space.momentum={type: float, min: 0.1, max: 0.9}",
            "tuner.search_space.momentum: not a tunable name",
        ),
    ],
)
def test_out_of_range_value_is_one_line_naming_the_key(override: str, message: str) -> None:
    """On the original's CNN under a search: most of these are its keys (units, filters, kernel_size, l2)."""
    with pytest.raises(ConfigError) as caught:
        compose("model=seed_cnn", "tuner=random", override)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_short_training_needs_no_warm_up_setting_unless_it_warms_up() -> None:
    """The default 3 warm-up epochs bind only the cosine schedule: plateau ignores them."""
    assert compose("train.schedule=plateau", "train.epochs=2").train.epochs == 2
    assert compose("train.epochs=2", "train.warmup_epochs=0").train.epochs == 2


def test_metric_names_without_a_class_list_accept_any_class() -> None:
    cfg = compose("data.classes=null", "train.monitor=val_recall_Usopp", "tuner.objective=precision_Chopper")
    assert cfg.train.monitor == "val_recall_Usopp"
    with pytest.raises(
        ConfigError,
        match=r"train.monitor: the model does not report 'val_f1' \(it reports loss, "
        r"accuracy, auc, precision_<class>, recall_<class>, val_loss",
    ):
        compose("data.classes=null", "train.monitor=val_f1")
    with pytest.raises(ConfigError, match="train.monitor: the model does not report 'val_recall_Usopp'"):
        compose("train.monitor=val_recall_Usopp")  # not one of data.classes


def test_a_tuner_chosen_on_the_command_line_beats_the_preset() -> None:
    """`experiment=tiny tuner=none` trains with the configured model: nothing is searched."""
    cfg = compose("experiment=tiny", "tuner=none", "model.dropout=0.3")
    assert cfg.tuner.kind == "none" and cfg.model.dropout == 0.3
    assert cfg.tuner.max_trials == 2 and cfg.data.image_size == 32  # the rest of the preset holds
    assert compose("experiment=tiny").tuner.kind == "random"
    original = compose("experiment=original")
    assert original.tuner.kind == "hyperband" and original.model.name == "seed_cnn"
    assert (original.train.optimizer, original.train.label_smoothing, original.train.warmup_epochs) == ("adam", 0, 0)
    assert compose("experiment=original", "model=resnet").model.name == "resnet"  # the command line wins
    assert compose("experiment=architecture_search").tuner.kind == "random"  # a search, though the default has none
    assert compose("experiment=original", "tuner=bayesian").tuner.kind == "bayesian"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.val_fraction=1.5", "data.val_fraction: must be between 0 and 1 (exclusive), got 1.5"),
        ("data.foo=1", "data.foo: unknown key"),
        ("tuner=nope", "In 'config': Could not find 'tuner/nope' (available: bayesian, hyperband, none, random)"),
        (
            "model.name=nope",
            "model.name: unknown architecture 'nope' (known: efficientnet_lite, efficientnet_v2_b0, mobilenet_v3_small, resnet, seed_cnn)",
        ),
    ],
)
def test_dvc_composition_refuses_a_bad_value_before_writing(tmp_path: Path, override: str, message: str) -> None:
    """DVC's own composition (what `dvc exp run -S` runs) validates: one line, and no params.yaml."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    with pytest.raises(ConfigError) as caught:
        compose_and_dump(out, str(REPO / "conf"), None, "config", str(tmp_path), [override])
    assert str(caught.value) == message
    assert not out.exists()


def test_the_plugin_leaves_other_hydra_configs_alone(tmp_path: Path) -> None:
    """Only a config listing SchemaCheck under hydra.callbacks is checked (as conf/config.yaml does)."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import ConfigCompositionException

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/config.yaml").write_text("data:\n  val_fraction: 0.2\n", encoding="utf-8")
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(tmp_path / "conf"), None, "config", str(tmp_path), ["data.val_fraction=1.5"])
    assert yaml.safe_load(out.read_text())["data"]["val_fraction"] == 1.5
    with pytest.raises(ConfigCompositionException):
        compose_and_dump(out, str(tmp_path / "conf"), None, "config", str(tmp_path), ["data.foo=1"])


def test_params_yaml_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["train"]["lerning_rate"] = 0.1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="train.lerning_rate: unknown key"):
        config.load_params(bad)


def test_missing_key_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    del raw["data"]["image_size"]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="data.image_size: missing value"):
        config.load_params(bad)


def test_cli_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """The user sees one line naming the key, no traceback, and params.yaml is left alone."""
    for name in ("conf", "params.yaml"):
        src = REPO / name
        dst = tmp_path / name
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    before = (tmp_path / "params.yaml").read_bytes()
    done = subprocess.run([CLI, "compose", "data.val_fraction=abc"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: data.val_fraction: Value 'abc' of type 'str' could not be converted to Float"
    ]
    assert (tmp_path / "params.yaml").read_bytes() == before


def test_cli_compose_writes_overrides(tmp_path: Path) -> None:
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(tmp_path / "conf")], check=True)
    done = subprocess.run([CLI, "compose", "data.val_fraction=0.25"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["data"]["val_fraction"] == 0.25


def test_cli_outside_a_project_says_where_to_run(tmp_path: Path) -> None:
    done = subprocess.run([CLI, "compose"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert "run from the project root" in done.stderr and "Traceback" not in done.stderr


def test_an_architecture_brings_its_own_schema_and_search_space() -> None:
    """`model=resnet` swaps the model section's schema and its part of the search space together."""
    cfg = compose("model=resnet")
    assert type(cfg.model).__name__ == "ResNet" and cfg.model.widths == [16, 32, 64, 128]
    assert set(cfg.tuner.search_space) == {"dropout", "learning_rate"}
    assert set(compose("model=seed_cnn").tuner.search_space) == {"units", "learning_rate"}
    with pytest.raises(ConfigError, match="model.widths: 5 stages after a stride-1 stem leave nothing of a 16-pixel"):
        compose("model=resnet", "model.resize=16", "model.widths=[16,16,16,16,16]")
    # A first stage of 4, 8 or 12 filters aborted the process inside TensorFlow's oneDNN on a CPU (issue 26).
    for widths, where in (("[8,16,32,64]", "model.widths"), ("[12]", "model.widths")):
        with pytest.raises(ConfigError, match=rf"^{where}: the first stage needs at least 16 filters, got "):
            compose("model=resnet", f"model.widths={widths}")
    space = "+tuner.search_space.widths={type: choice, values: [[16,32],[8,16]]}"
    with pytest.raises(ConfigError, match=r"^tuner.search_space.widths: the first stage needs at least 16 filters"):
        compose("model=resnet", "tuner=random", space)


def test_cli_unknown_architecture_is_one_line_exit_2(tmp_path: Path) -> None:
    for name in ("conf", "params.yaml"):
        subprocess.run(["cp", "-r", str(REPO / name), str(tmp_path / name)], check=True)
    done = subprocess.run([CLI, "compose", "model.name=vit"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: model.name: unknown architecture 'vit' (known: efficientnet_lite, efficientnet_v2_b0, mobilenet_v3_small, resnet, seed_cnn)"
    ]


def test_the_schema_check_is_installed_on_this_hydra_and_knows_when_it_would_not_fit(monkeypatch, capsys) -> None:
    """The plugin wraps Hydra 1.3's compose_config; on a Hydra whose compose_config takes other
    arguments it must say so (a warning line), never leave compositions unchecked in silence."""
    from hydra._internal.hydra import Hydra

    from hydra_plugins import op_classifier_compose as plugin

    assert plugin.INSTALLED and getattr(Hydra.compose_config, "op_classifier_checks", False)
    assert plugin.fits(Hydra.compose_config.__wrapped__)

    def renamed(self, name, overrides, mode):  # a Hydra that renamed compose_config's arguments
        raise AssertionError("not called")

    assert not plugin.fits(renamed)
    monkeypatch.setattr(Hydra, "compose_config", renamed)
    assert plugin.install() is False and Hydra.compose_config is renamed
    assert "compositions are not checked" in capsys.readouterr().err
