"""What evaluate draws beside its metrics: the confusion CSV `dvc plots show` reads, and the PNGs
attached to its run (figures.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.data.prepared import Split, single_label
from op_classifier.reports import figures


def write_confusion(path: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """One `actual,predicted` row per single-character test image, for `dvc plots show`."""
    single = single_label(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        for truth, guess in zip(labels[single].argmax(1), probs[single].argmax(1)):
            writer.writerow([classes[truth], classes[guess]])


def draw_figures(
    folder: Path,
    metrics: dict[str, Any],
    splits: dict[str, Split],
    probs: dict[str, np.ndarray],
    classes: list[str],
    history: Path,
) -> list[Path]:
    """The PNGs attached to the run: learning curves, confusion matrix, per-class scores, worst images."""
    test, val = splits["test"], splits["val"]
    drawn = [
        figures.learning_curves(history, folder / "learning_curves.png"),
        figures.confusion_matrix(test.labels, probs["test"], classes, folder / "confusion_matrix.png"),
        figures.per_class_scores(metrics["test_per_class"], folder / "per_class_scores.png"),
        figures.worst_classified(val.images, val.labels, probs["val"], classes, folder / "worst_val_images.png"),
    ]
    return [path for path in drawn if path is not None]
