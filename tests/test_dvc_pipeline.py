"""The four stages under real DVC commands, at tiny budgets, in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_in

STAGES = ("prepare", "tune", "train", "evaluate")


def _ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def _training_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("op-classifier")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'", order_by=["start_time ASC"])
    return runs


def test_repro_nothing_to_do_and_an_override_rerunning_only_train(repo_copy: Path) -> None:
    run_in(repo_copy, "op-classifier", "sample", "--out", "data/raw", "--per-class", "8", "--scenes", "4")
    run_in(repo_copy, "op-classifier", "compose", "experiment=tiny")

    first = run_in(repo_copy, "dvc", "repro")
    assert _ran(first.stdout) == set(STAGES)
    for path in ("experiments/tuning/best_hparams.yaml", "experiments/tuning/leaderboard.csv",
                 "experiments/model/model.keras", "experiments/model/saved_model/1/saved_model.pb",
                 "experiments/metrics.json", "experiments/plots/history.csv", "experiments/plots/confusion.csv"):
        assert (repo_copy / path).is_file(), path
    shown = json.loads(run_in(repo_copy, "dvc", "metrics", "show", "--json").stdout)
    assert "test_accuracy" in json.dumps(shown)

    again = run_in(repo_copy, "dvc", "repro")
    assert _ran(again.stdout) == set() and "didn't change" in again.stdout

    # DVC composes conf/ + overrides into params.yaml; only the stages reading train.* re-run.
    experiment = run_in(repo_copy, "dvc", "exp", "run", "-S", "experiment=tiny", "-S", "train.epochs=3")
    assert _ran(experiment.stdout) == {"train", "evaluate"}

    first_run, second_run = _training_runs(repo_copy)
    assert first_run.data.params["train.epochs"] == "2" and second_run.data.params["train.epochs"] == "3"
    assert second_run.data.tags.get("dvc_experiment")  # the DVC experiment's name, for finding it back
    assert "test_accuracy" in second_run.data.metrics

    table = json.loads(run_in(repo_copy, "dvc", "exp", "show", "--json").stdout)
    assert '"epochs": 3' in json.dumps(table) and "test_accuracy" in json.dumps(table)
