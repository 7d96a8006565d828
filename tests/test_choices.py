"""What a user composes survives DVC, and paths stay in the project (issue 35, cases 3 and 14)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from op_classifier import config
from op_classifier.cli import compose as choices
from op_classifier.errors import ConfigError
from tests.conftest import REPO, run_in

SAVED = Path("conf/project/composed.yaml")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """conf/ and params.yaml in a folder of their own."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _compose(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_in(root, "op-classifier", "compose", *args, check=False)


def _params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))


def test_compose_saves_its_choices_in_conf_and_params_is_what_conf_composes(project: Path) -> None:
    done = _compose(project, "data.classes=null", "data.image_size=224", "model=efficientnet_lite2")
    assert done.returncode == 0 and "your choices are saved in conf/project/composed.yaml" in done.stdout
    params = _params(project)
    assert params["data"]["classes"] is None and params["data"]["image_size"] == 224
    assert params["model"]["width"] == 1.1  # lite2
    # params.yaml is exactly conf/'s composition now: nothing lives in params.yaml alone
    assert config.to_yaml(config.compose(conf_dir=project / "conf")) == (project / "params.yaml").read_text()
    # a later compose adds to the saved choices; a new model forgets the last one's settings
    assert _compose(project, "model=resnet", "model.widths=[16,32]").returncode == 0
    assert _params(project)["model"]["widths"] == [16, 32] and _params(project)["data"]["image_size"] == 224
    assert _compose(project, "model=efficientnet_lite0").returncode == 0
    assert "widths" not in _params(project)["model"] and _params(project)["data"]["classes"] is None
    assert _compose(project, "~data.classes").returncode == 0
    assert _params(project)["data"]["classes"] == ["Luffy", "Nami", "Sanji", "Zoro"]
    assert _compose(project, "--reset").returncode == 0
    assert (
        not (project / SAVED).exists() and (project / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.val_fraction=2", "error: data.val_fraction: must be between 0 and 1 (exclusive), got 2"),
        (
            "~data.val_fraction",
            "error: ~data.val_fraction: no saved choice sets data.val_fraction (conf/ does: edit it there)",
        ),
        (
            "paths.model=../escape",
            "error: paths.model: ../escape is not inside the project ({root}): DVC tracks only paths inside it",
        ),
        (
            "paths.weights=/",
            "error: paths.weights: / is not inside the project ({root}): DVC tracks only paths inside it",
        ),
        ("seed=1,2", "error: seed=1,2: compose saves one value a key (no sweeps or @package)"),
    ],
)
def test_a_bad_choice_is_one_line_and_keeps_what_was_saved(project: Path, override: str, message: str) -> None:
    assert _compose(project, "data.image_size=224").returncode == 0
    saved, params = (project / SAVED).read_bytes(), (project / "params.yaml").read_bytes()
    done = _compose(project, override)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message.format(root=project.resolve())]
    assert (project / SAVED).read_bytes() == saved and (project / "params.yaml").read_bytes() == params


def test_a_config_that_does_not_include_the_saved_choices_is_refused(project: Path) -> None:
    text = (project / "conf/config.yaml").read_text().replace("  - optional project: composed", "")
    (project / "conf/config.yaml").write_text(text)
    done = _compose(project, "data.image_size=224")
    assert done.returncode == 2 and "its defaults list must end with `- optional project: composed`" in done.stderr
    assert not (project / SAVED).exists()


def test_params_whose_paths_leave_the_project_are_refused_by_the_stages(project: Path) -> None:
    params = _params(project)
    params["paths"]["model"] = "../elsewhere"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"^paths.model: ../elsewhere is not inside the project"):
        config.load_params(project / "params.yaml")


def test_saved_choices_read_back_as_written(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    groups, values = choices.merged(["model=resnet", "data.classes=[a,b]", "+tuner.search_space.x=1"], tmp_path, {}, {})
    choices.write(tmp_path, groups, values)
    assert choices.read(tmp_path) == (
        {"model": "resnet"},
        {"data": {"classes": ["a", "b"]}, "tuner": {"search_space": {"x": 1}}},
    )


def test_the_own_images_steps_keep_their_class_list_and_size_through_dvc_exp_run(repo_copy: Path) -> None:
    """README's own-images steps, then one `dvc exp run -S` experiment: the composed choices survive it."""
    run_in(repo_copy, "op-classifier", "sample", "--out", "data/raw", "--per-class", "6", "--scenes", "2")
    run_in(repo_copy, "op-classifier", "compose", "data.classes=null", "data.image_size=64")
    run_in(repo_copy, "git", "add", "conf", "params.yaml")
    run_in(repo_copy, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "my images")
    done = run_in(repo_copy, "dvc", "exp", "run", "-S", "seed=43", "prepare")
    assert "warning" not in done.stderr
    params = _params(repo_copy)
    assert params["seed"] == 43 and params["data"]["classes"] is None and params["data"]["image_size"] == 64
    import numpy as np

    assert np.load(repo_copy / "data/prepared/train/images.npy", mmap_mode="r").shape[1:] == (64, 64, 3)
    # a value in params.yaml alone (a hand edit) is said before DVC drops it; a path leaving the repository is refused
    (repo_copy / "params.yaml").write_text(
        (repo_copy / "params.yaml").read_text().replace("image_size: 64", "image_size: 96")
    )
    done = run_in(repo_copy, "dvc", "exp", "run", "-S", "seed=44", "prepare")
    assert "warning: params.yaml holds values that conf/ does not compose: data.image_size=96;" in done.stderr
    done = run_in(repo_copy, "dvc", "exp", "run", "-S", "paths.model=../escape", "prepare", check=False)
    assert done.returncode != 0 and "Running stage" not in done.stdout
    assert (
        (done.stdout + done.stderr)
        .strip()
        .splitlines()[-1]
        .startswith("ERROR: paths.model: ../escape is not inside the project")
    )
