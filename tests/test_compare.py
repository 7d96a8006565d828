"""Comparisons that know their noise (issue 23): paired statistics, the significant promotion, `compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap

from op_classifier.compare import paired
from op_classifier.compare.paired import Predictions
from op_classifier.errors import DataError
from op_classifier.tracking.registry import significance_decision
from tests.conftest import compose

CLASSES = ["Luffy", "Nami", "Sanji", "Zoro"]


def _predictions(right: np.ndarray, split: str = "test", seed: int = 0) -> Predictions:
    """A model that gets exactly the rows in `right` right (4 classes, one label each)."""
    n = len(right)
    truth = np.arange(n) % 4
    guess = np.where(right, truth, (truth + 1) % 4)
    scores = np.full((n, 4), 0.1) + np.random.default_rng(seed).uniform(0, 0.05, (n, 4))
    scores[np.arange(n), guess] = 0.9
    images = [(f"{CLASSES[t]}/{i:04d}.png", f"sha{i}") for i, t in enumerate(truth)]
    return Predictions(CLASSES, np.array([split] * n), images, np.eye(4)[truth], scores)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images() -> None:
    """Hand-checked: 1 image only A got right, 9 only B: p = 2 (1 + 10) / 2^10 = 0.021484375."""
    both = np.ones(40, dtype=bool)
    a, b = both.copy(), both.copy()
    a[:9] = False  # B alone right on 9
    b[9] = False  # A alone right on 1
    result = paired.compare(_predictions(a), _predictions(b), "test", resamples=2000)
    assert (result["only_a_right"], result["only_b_right"]) == (1, 9)
    assert result["mcnemar_p"] == pytest.approx(0.021484375)
    assert result["mcnemar_p"] == pytest.approx(binomtest(9, 10, 0.5).pvalue)
    assert result["accuracy"]["difference"] == pytest.approx(8 / 40)
    assert result["verdict"].startswith("B is better")


def test_the_interval_is_scipys_paired_bootstrap_of_the_per_image_differences() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(200) < 0.7, rng.random(200) < 0.8
    result = paired.compare(_predictions(a), _predictions(b), "test", resamples=3000, seed=5)
    expected = bootstrap(
        (b.astype(float) - a,), np.mean, n_resamples=3000, method="percentile", random_state=np.random.default_rng(5)
    ).confidence_interval
    assert result["accuracy_interval"] == pytest.approx([expected.low, expected.high])
    low, high = result["accuracy_interval"]
    assert low < result["accuracy"]["difference"] < high
    f1_low, f1_high = result["macro_f1_interval"]
    assert f1_low < result["macro_f1"]["difference"] < f1_high


def test_identical_models_are_a_tie_with_a_zero_interval() -> None:
    right = np.arange(30) % 3 != 0
    result = paired.compare(_predictions(right), _predictions(right, seed=1), "test", resamples=500)
    assert result["mcnemar_p"] == 1.0 and result["accuracy_interval"] == [0.0, 0.0]
    assert result["verdict"].startswith("no significant difference")


def test_models_scored_on_different_images_are_refused() -> None:
    right = np.ones(20, dtype=bool)
    other = _predictions(right)
    other.image[3] = ("Zoro/elsewhere.png", "another-sha")
    with pytest.raises(DataError, match="different test images"):
        paired.compare(_predictions(right), other, "test")


def test_the_predictions_file_round_trips_and_a_wrong_file_is_one_line(tmp_path: Path) -> None:
    labels, probs = np.eye(4)[[0, 1, 2, 3]], np.random.default_rng(0).random((4, 4))
    files = [{"split": "test", "index": i, "path": f"x/{i}.png", "sha256": f"h{i}"} for i in range(4)]
    paired.write_predictions(tmp_path / "p.csv", CLASSES, files, {"test": (labels, probs)})
    read = paired.read_predictions(tmp_path / "p.csv", "A")
    assert read.classes == CLASSES and read.image[2] == ("x/2.png", "h2")
    assert np.array_equal(read.labels, labels) and np.allclose(read.scores, probs, atol=1e-6)
    (tmp_path / "bad.csv").write_text("not,a,predictions,file\n")
    with pytest.raises(DataError, match="A: .*bad.csv is not a predictions file") as caught:
        paired.read_predictions(tmp_path / "bad.csv", "A")
    assert "\n" not in str(caught.value)


def _decision(champion: np.ndarray, new: np.ndarray) -> dict:
    result = paired.compare(_predictions(champion), _predictions(new), "test", resamples=500)
    theirs, mine = champion.mean(), new.mean()
    before = {
        "champion": mine > theirs,
        "champion_reason": f"val_accuracy {mine:.4f} vs {theirs:.4f}",
        "previous_champion_score": theirs,
    }
    return significance_decision(before, result)


def test_significant_promotes_a_real_gain_and_refuses_a_tie_and_a_gain_within_noise() -> None:
    base = np.arange(200) % 2 == 0  # right on half
    real = base.copy()
    real[1:80:2] = True  # 40 more right, none lost: p ~ 1.8e-12
    noise = base.copy()
    noise[1:7:2] = True  # 3 more right: p = 0.25
    assert _decision(base, real)["champion"]
    assert "p = " in _decision(base, real)["champion_reason"]
    tie = _decision(base, base)
    assert not tie["champion"]
    within = _decision(base, noise)
    assert not within["champion"] and "within noise" in within["champion_reason"]
    assert within["promotion"]["mcnemar_p"] == pytest.approx(0.25)
    low, high = within["promotion"]["interval"]
    assert low <= 0 <= high or low < within["promotion"]["difference"] < high


def test_the_registry_promotes_only_on_a_significant_gain(tmp_path: Path) -> None:
    """Real MLflow (SQLite): evaluate runs keep their predictions, register tests against the champion's."""
    import keras
    import mlflow

    from op_classifier.models.seed_cnn import build_model
    from op_classifier.tracking.runs import MlflowTracker

    tracker = MlflowTracker(compose(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}").tracking)
    model = build_model(num_classes=4, image_size=16, resize=None, seed=0, filters=[4], units=4)
    example = keras.ops.convert_to_numpy(keras.random.uniform((1, 16, 16, 3), 0, 255))
    files = [{"split": "val", "index": i, "path": f"x/{i}.png", "sha256": f"h{i}"} for i in range(200)]

    def evaluated(right: np.ndarray, name: str) -> dict:
        model_predictions = _predictions(right, split="val")
        path = tmp_path / name / "predictions.csv"
        paired.write_predictions(path, CLASSES, files, {"val": (model_predictions.labels, model_predictions.scores)})
        with tracker.run("train") as train_id:
            uri = tracker.log_model(model, example)
        with tracker.run("evaluate", tags={"stage": "evaluate"}, parent=train_id):
            tracker.log_artifact(path, "evaluation")
            judge = paired.judge(path, "val", alpha=0.05)
            return tracker.register(uri, float(right.mean()), 0.3, "val_accuracy", data_hash="d", judge=judge)

    base = np.arange(200) % 2 == 0
    assert evaluated(base, "first")["champion"]
    noise = base.copy()
    noise[1:7:2] = True
    within = evaluated(noise, "noise")  # higher val_accuracy, within noise: refused
    assert not within["champion"] and "within noise" in within["champion_reason"]
    real = base.copy()
    real[1:80:2] = True
    gained = evaluated(real, "real")
    assert gained["champion"], gained["champion_reason"]
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("op-classifier", "champion")
    assert str(champion.version) == "3" and float(champion.tags["promotion_mcnemar_p"]) < 0.05
    refused = client.get_model_version("op-classifier", "2")
    assert refused.tags["promotion"] == "significant" and "within noise" in refused.tags["champion_reason"]


def test_the_spread_of_seeds_is_the_mean_sd_and_t_interval() -> None:
    """Hand-checked: 0.8 and 0.9: sd 0.0707, t(0.975, 1) = 12.706, so 0.85 +- 0.6353."""
    from op_classifier.compare.repeat import spread

    found = spread([0.8, 0.9])
    assert found["mean"] == pytest.approx(0.85) and found["sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert [found["ci_low"], found["ci_high"]] == pytest.approx([0.85 - 0.63531, 0.85 + 0.63531], abs=1e-4)
    assert spread([0.5, 0.5, 0.5]) == {"mean": 0.5, "sd": 0.0, "ci_low": 0.5, "ci_high": 0.5}


@pytest.mark.slow
def test_repeat_runs_two_seeds_under_one_parent_run_with_their_spread(tiny_project: Path) -> None:
    """`op-classifier repeat --seeds 2` on the tiny config: one parent run (mean, sd, interval, a
    picture of the seeds) with each seed's runs nested under it; the workspace's results untouched."""
    import subprocess
    import sys

    import mlflow

    from tests.conftest import TINY

    store = f"sqlite:///{tiny_project / 'repeat.db'}"
    cli = str(Path(sys.executable).parent / "op-classifier")
    done = subprocess.run(
        [cli, "repeat", "--seeds", "2", "--jobs", "2", "--json", *TINY, "tuner=none", f"tracking.uri={store}"],
        cwd=tiny_project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert set(summary["seeds"]) == {"42", "43"}
    client = mlflow.MlflowClient(store)
    parent = client.get_run(summary["run_id"])
    values = [summary["seeds"][seed]["val_accuracy"] for seed in ("42", "43")]
    assert parent.data.metrics["val_accuracy_mean"] == pytest.approx(np.mean(values))
    assert parent.data.metrics["val_accuracy_sd"] == pytest.approx(np.std(values, ddof=1))
    assert parent.data.metrics["val_accuracy_ci_low"] <= np.mean(values) <= parent.data.metrics["val_accuracy_ci_high"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.stage = 'train'"
    )
    assert sorted(run.data.params["seed"] for run in children) == ["42", "43"]
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == ["figures/seed_scores.png"]
    assert not (tiny_project / "experiments/metrics.json").exists()  # each seed wrote under experiments/repeats


def test_models_of_other_classes_are_refused() -> None:
    """A version of another model (other classes) is not compared: one line."""
    right = np.ones(8, dtype=bool)
    other = _predictions(right)
    other.classes = ["cat", "dog", "fish", "bird"]
    with pytest.raises(DataError, match="different classes"):
        paired.compare(_predictions(right), other, "test")


def _written(tmp_path: Path, name: str = "p.csv") -> Path:
    """A predictions file as evaluate writes it: four test images, four classes."""
    labels, probs = np.eye(4), np.full((4, 4), 0.25)
    files = [{"split": "test", "index": i, "path": f"x/{i}.png", "sha256": f"h{i}"} for i in range(4)]
    paired.write_predictions(tmp_path / name, CLASSES, files, {"test": (labels, probs)})
    return tmp_path / name


def _edited(path: Path, line: int, edit: object) -> Path:
    """The file with one line's fields changed by edit (a function of the field list)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = ",".join(edit(lines[line - 1].split(",")))  # type: ignore[operator]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HOSTILE = {  # issue 35, case 8: what a hand-edited or corrupted predictions.csv holds, and on which line
    "nan": lambda fields: [*fields[:-1], "nan"],
    "inf": lambda fields: [*fields[:-1], "inf"],
    "-inf": lambda fields: [*fields[:-1], "-inf"],
    "1e308": lambda fields: [*fields[:-1], "1e308"],
    "-5": lambda fields: [*fields[:-1], "-5"],
    "one score short": lambda fields: fields[:-1],
    "one column long": lambda fields: [*fields, "0.5"],
}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_score_that_is_no_probability_or_a_malformed_row_is_one_line(tmp_path: Path, hostile: str) -> None:
    """Scores are sigmoid probabilities in [0, 1], one per class: anything else names its line, in one line.

    Before: NaN, inf, 1e308 and -5 were read as scores (and compared); a short or long row in a file of
    one row was a reshape traceback, and four rows each one short were read as two rows."""
    path = _edited(_written(tmp_path), 3, HOSTILE[hostile])
    with pytest.raises(DataError, match=r"A: .*p\.csv is not a predictions file.*line 3") as caught:
        paired.read_predictions(path, "A")
    assert "\n" not in str(caught.value)
    single = tmp_path / "single.csv"
    lines = _written(tmp_path).read_text(encoding="utf-8").splitlines()[:2]
    single.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        paired.read_predictions(_edited(single, 2, HOSTILE[hostile]), "A")


def test_every_row_one_score_short_is_not_read_as_fewer_rows(tmp_path: Path) -> None:
    path = _written(tmp_path)
    for line in range(2, 6):
        _edited(path, line, lambda fields: fields[:-1])
    with pytest.raises(DataError, match="line 2 has 8 fields, its header 9"):
        paired.read_predictions(path, "A")


def _evaluated_run(root: Path, predictions: Path) -> str:
    """A training run with an evaluate run under it that kept predictions (as evaluate logs them)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("op-classifier", artifact_location=(root / "mlartifacts").as_uri())
    training = client.create_run(experiment, tags={"stage": "train"}).info.run_id
    tags = {"stage": "evaluate", "mlflow.parentRunId": training}
    evaluation = client.create_run(experiment, tags=tags).info.run_id
    client.log_artifact(evaluation, str(predictions), "evaluation")
    for run_id in (evaluation, training):
        client.set_terminated(run_id)
    return training


@pytest.mark.parametrize("hostile", ["nan", pytest.param("one score short", marks=pytest.mark.slow)])
def test_compare_refuses_a_hostile_predictions_file_in_one_line(tmp_path: Path, hostile: str) -> None:
    """The user's view: `op-classifier compare workspace <run>` with a hostile workspace file: exit 2, one line."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    (tmp_path / "good").mkdir()
    training = _evaluated_run(tmp_path, _written(tmp_path / "good", "predictions.csv"))
    workspace = _edited(_written(tmp_path, "predictions.csv"), 3, HOSTILE[hostile])
    overrides = [f"paths.predictions={workspace}", f"paths.model={tmp_path / 'model'}"]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "op-classifier"), "compare", "workspace", training, *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: workspace: ") and "line 3" in done.stderr
