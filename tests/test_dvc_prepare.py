"""`dvc repro` and `dvc exp run -S` drive the prepare stage, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import run_in
from tests.test_prepare import distinct_image, save, write_dataset


def _manifest(repo: Path) -> dict:
    return json.loads((repo / "data/prepared/manifest.json").read_text())


def test_dvc_repro_then_nothing_to_do_then_exp_override(repo_copy: Path) -> None:
    run_in(repo_copy, "op-classifier", "sample", "--out", "data/raw", "--per-class", "10", "--scenes", "4")

    run_in(repo_copy, "dvc", "repro", "prepare")
    manifest = _manifest(repo_copy)
    assert manifest["classes"] == ["Luffy", "Nami", "Sanji", "Zoro"]
    total = sum(np.load(repo_copy / f"data/prepared/{s}/labels.npy").shape[0] for s in ("train", "val", "test"))
    assert total == 44
    images = np.load(repo_copy / "data/prepared/train/images.npy", mmap_mode="r")
    assert images.shape[1:] == (180, 180, 3) and images.dtype == np.uint8

    again = run_in(repo_copy, "dvc", "repro", "prepare")
    assert "didn't change" in again.stdout and "Running stage 'prepare'" not in again.stdout

    # DVC's Hydra composition writes params.yaml from conf/ plus the override, then re-runs prepare.
    run_in(repo_copy, "dvc", "exp", "run", "-S", "data.val_fraction=0.3", "prepare")
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    assert params["data"]["val_fraction"] == 0.3
    counts = _manifest(repo_copy)["counts"]
    assert counts["val"] > counts["test"]


def test_stage_error_stops_dvc_with_one_line(repo_copy: Path) -> None:
    """No data at all: prepare fails with a clear message, not a traceback."""
    (repo_copy / "data/raw/Luffy").mkdir(parents=True)
    done = run_in(repo_copy, "dvc", "repro", "prepare", check=False)
    assert done.returncode != 0
    assert "error:" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_non_utf8_file_name_does_not_stop_dvc(repo_copy: Path) -> None:
    """DVC cannot hash a name that is not UTF-8: .dvcignore hides it, prepare skips and names it."""
    raw = repo_copy / "data/raw"
    write_dataset(raw)
    save(distinct_image(1), raw / "Nami" / os.fsdecode(b"caf\xe9.png"))  # Latin-1 bytes
    run_in(repo_copy, "dvc", "repro", "prepare")
    manifest = _manifest(repo_copy)
    assert [(entry["path"], entry["kind"]) for entry in manifest["skipped"]] == [("Nami/caf\\xe9.png", "bad_name")]
    assert sum(manifest["counts"].values()) == 12


@pytest.mark.slow
def test_default_sample_reproduces_the_hash_data_dvc_records(repo_copy: Path) -> None:
    """`make run` on a fresh clone regenerates data/raw; it must be the data data.dvc names."""
    assert not (repo_copy / "data/raw").exists()
    run_in(repo_copy, "op-classifier", "sample", "--out", "data/raw")
    recorded = (repo_copy / "data.dvc").read_text()
    run_in(repo_copy, "dvc", "commit", "--force", "data.dvc")  # re-hashes data/raw into data.dvc
    assert (repo_copy / "data.dvc").read_text() == recorded


def test_dvc_exp_run_refuses_a_bad_override_in_one_line_and_keeps_params(repo_copy: Path) -> None:
    """The value is refused while DVC composes, before params.yaml is written or any stage runs."""
    before = (repo_copy / "params.yaml").read_bytes()
    for override, message in [
        ("data.val_fraction=1.5", "ERROR: data.val_fraction: must be between 0 and 1 (exclusive), got 1.5"),
        ("data.foo=1", "ERROR: data.foo: unknown key"),
    ]:
        done = run_in(repo_copy, "dvc", "exp", "run", "-S", override, "prepare", check=False)
        assert done.returncode != 0
        assert (done.stdout + done.stderr).strip().splitlines() == [message]
        assert (repo_copy / "params.yaml").read_bytes() == before
