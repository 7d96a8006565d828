"""experiment=full_search: backbone variants with their own conditional keys, Hyperband over the fine-tuning,
the parsimonious pick, extending a finished search, and the analysis on the tune run."""

from __future__ import annotations

import csv
import random
import shutil
import sys
from pathlib import Path

import keras_tuner as kt
import pytest
from PIL import Image

from op_classifier.reports import search
from op_classifier.stages import train, tune
from op_classifier.training import hparams, leaderboard
from op_classifier.training.hypermodel import SearchModel, Trials, candidates
from tests.conftest import DATA, REPO, compose, mlflow_client, paths_under, run_in, tiny_cfg

LITES = ["efficientnet_lite", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The tiny sample prepared, once for this module (conftest.tiny_project)."""
    return tiny_project


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_each_backbone_draws_its_own_keys_and_never_anothers() -> None:
    """lite0's rotation is not lite2's: a trial of one backbone holds only that backbone's model keys."""
    cfg = compose("experiment=full_search")
    found, shared, choice = candidates(cfg)
    assert list(found) == LITES and [c.section.resize for c in found.values()] == [224, 240, 260]
    assert set(shared) == {"learning_rate", "fine_tune_layers", "fine_tune_lr_factor", "label_smoothing"}
    hypermodel = SearchModel(found, shared, choice, {}, 1e-3, ["a", "b"], Trials(1, 1, "val_accuracy", "max"))
    for name in LITES:
        hp = kt.HyperParameters()
        hp.Choice("name", LITES)
        hp.values["name"] = name
        drawn, values = hypermodel.draw(hp)
        own = {key for key in hp.values if "." in key}
        assert drawn == name and own == {f"{name}.{key}" for key in ("dropout", "rotation", "zoom")}
        assert set(values) == {*shared, "dropout", "rotation", "zoom"}


def test_the_pick_is_the_cheapest_trial_within_noise_of_the_best() -> None:
    rows = [
        {"trial_id": "2", "score": 0.90, "vs_best": "best", "name": "lite2"},
        {"trial_id": "0", "score": 0.88, "vs_best": "within noise", "name": "lite0"},
        {"trial_id": "1", "score": 0.87, "vs_best": "within noise", "name": "lite1"},
        {"trial_id": "3", "score": 0.70, "vs_best": "worse", "name": "lite0b"},
    ]
    cost = {"lite2": 858e6, "lite1": 599e6, "lite0": 384e6, "lite0b": 1e6}
    chosen, why = leaderboard.pick(rows, lambda row: cost[row["name"]])
    assert chosen["trial_id"] == "0"  # trial 3 is cheaper still, but worse than the best beyond noise
    assert [row["picked"] for row in rows] == [False, True, False, False]
    assert why.startswith("trial 0: the cheapest of the 3 trials within noise of the best (trial 2, 0.9000)")
    assert rows[0]["multiply_adds_m"] == 858.0 and "multiply_adds_m" not in rows[3]


def test_among_equal_costs_the_pick_is_the_best_score() -> None:
    rows = [
        {"trial_id": "1", "score": 0.9, "vs_best": "best"},
        {"trial_id": "0", "score": 0.8, "vs_best": "within noise"},
    ]
    chosen, why = leaderboard.pick(rows, lambda row: 5e6)
    assert chosen["trial_id"] == "1"
    assert why == "trial 1: the best score; none of the 1 trials within noise of it is cheaper"
    assert leaderboard.pick(rows, None)[1] == "trial 1: the best score"


def test_importance_names_the_hyperparameter_that_moved_the_score(tmp_path: Path) -> None:
    """Twelve trials whose score follows the fine-tuning's rate and not the label smoothing."""
    rng = random.Random(0)
    rows = []
    for i in range(12):
        rate, smoothing = rng.choice([0.01, 0.02, 0.05]), rng.choice([0.0, 0.1])
        rows.append(
            {
                "trial_id": str(i),
                "score": 0.6 + 5 * rate + rng.uniform(0, 0.005),
                "name": rng.choice(LITES[:2]),
                "fine_tune_lr_factor": rate,
                "label_smoothing": smoothing,
                "tuner/epochs": 2,
                "picked": i == 0,
            }
        )
    table, why_not = search.importance(rows, seed=0)
    assert why_not is None and table[0]["hyperparameter"] == "fine_tune_lr_factor"
    assert {row["hyperparameter"] for row in table} == {"fine_tune_lr_factor", "label_smoothing", "name"}
    written = search.write_importance(tmp_path / "importance.csv", table)
    assert _rows(str(written))[0]["hyperparameter"] == "fine_tune_lr_factor"
    for path in (
        search.search_trials(rows, search.drawn_names(rows), "val_accuracy", tmp_path / "trials.png"),
        search.importance_bars(table, tmp_path / "importance.png"),
    ):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400
    table, why_not = search.importance(rows[:3], seed=0)
    assert table == [] and why_not.startswith("3 scored trial(s)") and why_not.endswith("too few to tell")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "tuner.search_space.fine_tune_layers={type: int, min: 0, max: 10}",
            "tuner.search_space.fine_tune_layers.min: must be at least 1, got 0",
        ),
        (
            "tuner.search_space.name={type: choice, values: [efficientnet_lite, efficientnet_lite9]}",
            "tuner.search_space.name.values: unknown architecture 'efficientnet_lite9'",
        ),
        (
            "model=resnet",
            "tuner.search_space.fine_tune_layers: the fine-tuning is searched for a pretrained model only",
        ),
    ],
)
def test_a_malformed_search_space_is_one_line_and_exit_2(tmp_path: Path, override: str, message: str) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    done = run_in(
        tmp_path, sys.executable, "-m", "op_classifier.cli", "compose", "experiment=full_search", override, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "params.yaml").exists()


# A full search the tiny project affords: lite0 and lite1 on 32-pixel images, Hyperband up to 2 epochs.
TINY_FULL_SEARCH = (
    "experiment=full_search",
    "data.image_size=32",
    "model.resize=null",
    "tuner.search_space.name.values=[efficientnet_lite,efficientnet_lite1]",
    "tuner.max_epochs=2",
    "tuner.factor=2",
    "tuner.batch_size=16",
    "train.epochs=3",
)


@pytest.mark.slow
def test_a_full_search_promotes_the_best_and_trains_the_pick(project: Path, tmp_path: Path) -> None:
    """Hyperband: weak trials stop at one epoch, the best goes on; train fine-tunes for the pick's epochs;
    the trials are nested runs and the analysis is on the tune run."""
    moved = [*paths_under(project), *paths_under(tmp_path, skip=DATA)]
    store = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(*TINY_FULL_SEARCH, *moved, store)
    tuned = tune.run(cfg)
    rows = _rows(cfg.paths.leaderboard)
    one_epoch = {row["trial_id"] for row in rows if row["tuner/epochs"] == "1"}
    promoted = {row["tuner/trial_id"] for row in rows if row["tuner/trial_id"]}
    assert promoted and promoted < one_epoch  # some one-epoch trials went on, the others stopped there
    for row in rows:  # a trial holds its own backbone's keys only
        others = [name for name in LITES if name != row["name"]]
        assert not [key for key, value in row.items() if value and key.split(".")[0] in others]
    assert sum(row["picked"] == "True" for row in rows) == 1 and tuned["pick"].startswith("trial ")
    best = hparams.read_best(Path(cfg.paths.best_hparams))
    picked = next(row for row in rows if row["picked"] == "True")
    assert best["why"] == tuned["pick"] and best["values"]["fine_tune_layers"] == int(picked["fine_tune_layers"])
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("op-classifier").experiment_id], "tags.stage = 'tune'")
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(trials) == len(rows)
    assert run.data.tags["pick"] == tuned["pick"]
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "analysis")}
    assert {"analysis/leaderboard.csv", "analysis/importance.csv", "analysis/trials.png"} <= logged
    trained = train.run(cfg)  # the pick, fine-tuned for train.fine_tune_epochs
    assert trained["fine_tune_epochs_run"] == cfg.train.fine_tune_epochs


@pytest.mark.slow
def test_a_raised_max_trials_runs_only_the_new_trials(project: Path, tmp_path: Path, capsys) -> None:
    """4 trials, then max_trials=6: 2 new trial runs, none logged twice, the pick the same or better."""
    moved = paths_under(tmp_path, skip=DATA)
    first = tune.run(tiny_cfg(project, "tuner.max_trials=4", *moved))
    capsys.readouterr()
    second = tune.run(tiny_cfg(project, "tuner.max_trials=6", *moved))
    said = capsys.readouterr().err
    assert "extending the finished search" in said and "its 4 trials are kept, 2 new ones run" in said
    assert second["trials"] == 6 and second["score"] >= first["score"]
    client = mlflow_client(project)
    run = client.get_run(first_run(tmp_path))
    trials = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(t.data.tags["trial_id"] for t in trials) == [f"{i}" for i in range(6)]
    capsys.readouterr()
    third = tune.run(tiny_cfg(project, "tuner.max_trials=3", *moved))  # lowered: anew, and it says why
    assert "max_trials changed from 6 to 3" in capsys.readouterr().err and third["trials"] == 3


def first_run(root: Path) -> str:
    """The tune run's id, as the search folder keeps it."""
    from op_classifier.tracking import RUN_ID_FILE

    return (root / "experiments/tuning/search" / RUN_ID_FILE).read_text(encoding="utf-8").strip()


def test_a_killed_search_resumes_unless_asked_for_fewer_trials(tmp_path: Path, capsys) -> None:
    """A search killed half-way resumes at the same or a raised max_trials; a lowered one starts anew and says why
    (as for a finished search): Keras Tuner would otherwise keep the trials beyond the new budget."""
    from op_classifier.training import state, tuners

    folder = tmp_path / "search"
    made_by = {"id": "abc", tuners.BUDGET: 6}
    state.claim(folder, made_by, "tuner search")
    (folder / "oracle.json").write_text("{}", encoding="utf-8")  # a killed search's state: not complete
    for budget, why in ((6, None), (8, None), (2, "max_trials changed from 6 to 2")):
        cfg = compose(f"tuner.max_trials={budget}").tuner
        reuse, why_anew, extending = tuners.resumption(folder, {**made_by, tuners.BUDGET: budget}, cfg)
        assert (reuse, extending) == (False, False) and (why_anew or "").startswith(why or ""), why_anew
        assert (why_anew is None) == (why is None)
    other = tuners.resumption(folder, {"id": "other", tuners.BUDGET: 2}, compose("tuner.max_trials=2").tuner)
    assert other == (False, None, False)  # another search's state: claim says what changed, not the budget
    assert state.claim(folder, {**made_by, tuners.BUDGET: 6}, "tuner search")  # resumed
    assert not state.claim(folder, {**made_by, tuners.BUDGET: 2}, "tuner search", why=_why(folder))
    assert "not resuming the tuner search" in capsys.readouterr().err and not (folder / "oracle.json").exists()


def _why(folder: Path) -> str:
    from op_classifier.training import tuners

    return tuners.resumption(folder, {"id": "abc", tuners.BUDGET: 2}, compose("tuner.max_trials=2").tuner)[1]
