"""The search's trials ranked, each marked by whether it differs from the best by more than noise."""

from __future__ import annotations

import contextlib
import csv
import logging
import warnings
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def quiet_trials() -> Iterator[None]:
    """Each trial's model is new: TensorFlow warns, 600 characters a time, of the functions it retraces,
    and Keras that a promoted Hyperband trial's checkpoint holds an optimizer it does not load (the
    trial recompiles for its next round); the trial's own line says what matters."""
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer", UserWarning)
            yield
    finally:
        tf_log.setLevel(level)


def outcome(tuner: Any, data: SearchData, alpha: float, cost: Callable[[dict], int] | None = None) -> dict[str, Any]:
    """A finished tuner's leaderboard (each trial against the best), the picked trial's values (by their
    config names: the hypermodel's `searched`), its score, and why it was picked.

    With `cost` (a trial's hyperparameter values to its model's multiply-adds), the pick is the cheapest
    trial within noise of the best; without, the best."""
    rows = leaderboard(tuner)
    require_a_result(tuner, rows)
    mark_noise(tuner, rows, data, alpha)
    trials = {row["trial_id"]: tuner.oracle.get_trial(row["trial_id"]) for row in rows}
    picked, why = pick(rows, cost and (lambda row: cost(trials[row["trial_id"]].hyperparameters.values)))
    values = trials[picked["trial_id"]].hyperparameters.values
    return {
        "rows": rows,
        "best": tuner.hypermodel.searched(values),
        "values": values,
        "score": picked["score"],
        "why": why,
    }


TIED = ("best", "within noise")  # the marks of the trials the pick is made among


def pick(rows: list[dict[str, Any]], cost: Callable[[dict], int] | None) -> tuple[dict[str, Any], str]:
    """The trial to train: the cheapest (fewest multiply-adds) among those within noise of the best, the
    better score first among equals; each row says its cost and whether it was picked. Also why, in words."""
    tied = [row for row in rows if row.get("vs_best") in TIED and row["score"] is not None]
    if cost is not None:
        for row in tied:
            row["multiply_adds_m"] = round(cost(row) / 1e6, 1)
    chosen = min(tied, key=lambda row: row.get("multiply_adds_m", 0.0))  # min keeps the first (best) of equals
    for row in rows:
        row["picked"] = row is chosen
    best = rows[0]
    if chosen is best:
        others = len(tied) - 1
        why = f"trial {best['trial_id']}: the best score" + (
            f"; none of the {others} trials within noise of it is cheaper" if others and cost else ""
        )
    else:
        why = (
            f"trial {chosen['trial_id']}: the cheapest of the {len(tied)} trials within noise of the best "
            f"(trial {best['trial_id']}, {best['score']:.4f}): {chosen['score']:.4f} at "
            f"{chosen['multiply_adds_m']:g}M multiply-adds an image against {best['multiply_adds_m']:g}M"
        )
    return chosen, why


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
        with quiet_trials():  # only predictions are asked of these models: their optimizers are not needed
            try:  # a trial that failed, or whose checkpoint is gone, kept no model to ask
                model = tuner.load_model(tuner.oracle.get_trial(trial_id))
            except Exception:
                return None
            probs = model.predict(data.val_x, verbose=0)
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


def write_leaderboard(path: Path, rows: list[dict[str, Any]]) -> Path:
    """CSV of the trials, best first; its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
