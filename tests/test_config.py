"""The config flow: conf/ -> params.yaml -> typed, validated config; errors name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from op_classifier import config
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

    overrides = ["data.val_fraction=0.25", "train.epochs=3"]
    compose_and_dump(tmp_path / "dvc.yaml", str(REPO / "conf"), None, "config", str(tmp_path), overrides)
    ours = config.to_yaml(config.compose(tuple(overrides), conf_dir=REPO / "conf"))
    assert ours == (tmp_path / "dvc.yaml").read_text(encoding="utf-8")


def test_composed_config_is_typed() -> None:
    cfg = compose("data.val_fraction=0.25", "seed=7")
    assert isinstance(cfg.data, config.DataConfig)
    assert cfg.data.val_fraction == 0.25 and cfg.seed == 7
    assert cfg.data.classes == ["Luffy", "Nami", "Sanji", "Zoro"]
    assert cfg.tuner.search_space["units"].max == 512


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
    ],
)
def test_bad_override_is_an_error_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        compose(override)


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
