"""The four stages under real DVC commands, at tiny budgets, in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_in
from tests.test_quiet import assert_short

STAGES = ("prepare", "audit", "tune", "train", "evaluate")


def _ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def _training_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("op-classifier")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'", order_by=["start_time ASC"])
    return runs


def _experiment_rows(table: list) -> list[dict]:
    """The experiment rows of `dvc exp show --json` (not the workspace, not the baseline commit)."""
    return [exp for row in table for run in (row.get("experiments") or []) for exp in run.get("revs", [])]


def _repro(repo_copy: Path) -> None:
    """The tiny sample through `dvc repro`: every stage once, a short line each, every output written."""
    run_in(repo_copy, "op-classifier", "sample", "--out", "data/raw", "--per-class", "8", "--scenes", "4")
    run_in(repo_copy, "op-classifier", "compose", "experiment=tiny")

    first = run_in(repo_copy, "dvc", "repro")
    assert _ran(first.stdout) == set(STAGES)
    # TensorFlow's oneDNN logged an error line for Keras's AUC update in every training (issue 26)
    assert "oneDNN supports" not in first.stdout + first.stderr, first.stderr
    # One voice (issue 37): short lines, no banners, a line a stage.
    assert_short(first.stdout.splitlines() + first.stderr.splitlines())
    for stage in STAGES:
        assert sum(line.startswith(f"{stage}: ") for line in first.stdout.splitlines()) == 1, first.stdout
    assert any(line.startswith("tune: 2 trials (random)") for line in first.stdout.splitlines()), first.stdout
    for path in (
        "experiments/tuning/best_hparams.yaml",
        "experiments/tuning/leaderboard.csv",
        "experiments/model/model.keras",
        "experiments/model/saved_model/1/saved_model.pb",
        "experiments/metrics.json",
        "experiments/plots/history.csv",
        "experiments/plots/confusion.csv",
    ):
        assert (repo_copy / path).is_file(), path
    shown = json.loads(run_in(repo_copy, "dvc", "metrics", "show", "--json").stdout)
    assert "test_accuracy" in json.dumps(shown)
    # `make exps`: the headline first, no class's scores, no dependency's hash
    header = run_in(repo_copy, "dvc", "exp", "show", "--csv", "--drop", _exps_drop()).stdout.splitlines()[0].split(",")
    assert header[5:7] == ["val_accuracy", "test_accuracy"], header
    assert not [column for column in header if "per_class" in column or column.startswith(("src/", "data/"))]


def _exps_drop() -> str:
    """The Makefile's EXPS_DROP, as make hands it to dvc."""
    line = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("EXPS_DROP := "))
    return line.removeprefix("EXPS_DROP := ").replace("$$", "$")


def test_repro_runs_every_stage_once_with_a_short_line_each(repo_copy: Path) -> None:
    _repro(repo_copy)


@pytest.mark.slow
def test_repro_then_experiments_each_showing_their_own_metrics_and_plots(repo_copy: Path) -> None:
    _repro(repo_copy)
    again = run_in(repo_copy, "dvc", "repro")
    assert _ran(again.stdout) == set() and "didn't change" in again.stdout
    run_in(repo_copy, "git", "add", "-A")  # as a user commits dvc.lock with the metrics it records
    run_in(repo_copy, "git", "commit", "-qm", "baseline")

    # DVC composes conf/ + overrides into params.yaml; only the stages reading train.* re-run (tune
    # declares the head phase's keys: a pretrained model's search of its head trains as that phase).
    override = ("-S", "experiment=tiny", "-S", "train.epochs=3", "-S", "train.learning_rate=0.003")
    experiment = run_in(repo_copy, "dvc", "exp", "run", *override)
    assert _ran(experiment.stdout) == {"tune", "train", "evaluate"}

    first_run, second_run = _training_runs(repo_copy)
    assert first_run.data.params["train.epochs"] == "2" and second_run.data.params["train.epochs"] == "3"
    assert second_run.data.tags.get("dvc_experiment")  # the DVC experiment's name, for finding it back
    (dataset,) = second_run.inputs.dataset_inputs  # the data set as DVC knows it: data.dvc's hash
    assert dataset.dataset.digest == yaml.safe_load((repo_copy / "data.dvc").read_text())["outs"][0]["md5"]
    assert dataset.dataset.name == "raw" and str(repo_copy / "data/raw") in dataset.dataset.source  # one folder
    assert "test_accuracy" in second_run.data.metrics

    # The baseline's row and the experiment's each hold their own metrics (not "!"): git committed them.
    table = json.loads(run_in(repo_copy, "dvc", "exp", "show", "--json").stdout)
    (baseline,) = [row for row in table if row.get("experiments")]
    (row,) = _experiment_rows(table)
    default_rate = yaml.safe_load((repo_copy / "conf/train/default.yaml").read_text())["learning_rate"]
    for shown_row, expected in ((baseline, (2, default_rate)), (row, (3, 0.003))):
        metrics = shown_row["data"]["metrics"]["experiments/metrics.json"]["data"]
        assert 0.0 <= metrics["val_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
        train = shown_row["data"]["params"]["params.yaml"]["data"]["train"]
        assert (train["epochs"], train["learning_rate"]) == expected

    shown = json.loads(run_in(repo_copy, "dvc", "plots", "diff", "HEAD", row["name"], "--json").stdout)
    assert not shown.get("errors")
    for suffix in ("history.csv", "confusion.csv"):
        (key,) = [k for k in shown["data"] if k.endswith(suffix)]
        revisions = {rev for item in shown["data"][key] for rev in item["revisions"]}
        assert {"HEAD", row["name"]} <= revisions, (key, revisions)  # each one's own plot data
