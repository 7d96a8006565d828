"""The search's trials ranked, each marked by whether it differs from the best by more than noise."""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from op_classifier.compare import paired
from op_classifier.data.prepared import single_label
from op_classifier.errors import OpClassifierError


@dataclass(frozen=True)
class SearchData:
    """What every trial trains on and is scored on: image streams, or a frozen backbone's features."""

    train: Any
    val: Any  # a stream of (images, labels), or (features, labels)
    val_x: Any  # what a trial's model predicts the val split from: the image stream, or the features
    val_labels: Any


def outcome(tuner: Any, data: SearchData, alpha: float) -> dict[str, Any]:
    """A finished tuner's leaderboard (each trial against the best), its best values (by their config
    names: the hypermodel's `searched`) and score."""
    rows = leaderboard(tuner)
    require_a_result(tuner, rows)
    mark_noise(tuner, rows, data, alpha)
    best = tuner.hypermodel.searched(tuner.get_best_hyperparameters(1)[0].values)
    return {"rows": rows, "best": best, "score": rows[0]["score"]}


def require_a_result(tuner: Any, rows: list[dict[str, Any]]) -> None:
    """No trial with a score means every one failed: say why rather than train on a guess."""
    if rows and rows[0]["score"] is not None:
        return
    messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
    why = messages[-1].strip().splitlines()[-1] if messages else "no trial ran"
    raise OpClassifierError(f"no tuning trial finished with a score ({why})")


def leaderboard(tuner: Any) -> list[dict[str, Any]]:
    """Every trial, best first: id, status, score and its hyperparameter values."""
    rows = [
        {
            "trial_id": t.trial_id,
            "status": str(t.status),
            "score": None if t.score is None else float(t.score),
            **t.hyperparameters.values,
        }
        for t in tuner.oracle.trials.values()
    ]
    sign = -1 if tuner.oracle.objective.direction == "max" else 1
    return sorted(rows, key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0)))


def mark_noise(tuner: Any, rows: list[dict[str, Any]], data: SearchData, alpha: float) -> None:
    """Say, in each row, whether the trial's kept model answers the validation images differently
    enough from the best trial's to count (exact McNemar, p < alpha), so a 0.01 gap is not a ranking."""
    labels = data.val_labels
    single = single_label(labels)
    truth = labels[single].argmax(1)

    def right(trial_id: str) -> Any:
        try:  # a trial that failed, or whose checkpoint is gone, kept no model to ask
            with warnings.catch_warnings():
                # The checkpoint holds the trial's optimizer state too, which Keras says it skips: only
                # predictions are asked of this model, so the optimizer is not needed.
                warnings.filterwarnings("ignore", "Skipping variable loading for optimizer", UserWarning)
                model = tuner.load_model(tuner.oracle.get_trial(trial_id))
        except Exception:
            return None
        # A model each trial: TensorFlow warns, in 600 characters, of the predict functions it retraces.
        tf_log = logging.getLogger("tensorflow")
        level = tf_log.level
        tf_log.setLevel(logging.ERROR)
        try:
            probs = model.predict(data.val_x, verbose=0)
        finally:
            tf_log.setLevel(level)
        return probs[single].argmax(1) == truth

    best = right(rows[0]["trial_id"]) if rows else None
    for index, row in enumerate(rows):
        answers = None if index == 0 or best is None or row["score"] is None else right(row["trial_id"])
        if index == 0:
            row["vs_best"] = "best"
        elif answers is None:
            row["vs_best"] = "no kept model to test"
        else:
            row["mcnemar_p_vs_best"] = round(paired.mcnemar(best, answers), 4)
            row["vs_best"] = "worse" if row["mcnemar_p_vs_best"] < alpha else "within noise"


def write_leaderboard(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV of the trials, best first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
