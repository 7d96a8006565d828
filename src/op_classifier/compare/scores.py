"""What evaluate measures on a model's val and test probabilities: top-1 accuracy, per-class scores on
test, multi-character scenes; and the refusal of a model that answers NaN or infinity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.compare.paired import per_class
from op_classifier.data.prepared import Split, top1
from op_classifier.errors import DataError

THRESHOLD = 0.5


def check_finite(probs: dict[str, np.ndarray], model: Path) -> None:
    """Refuse a model whose scores are not all finite: a broken model is never scored, registered or served."""
    for split, scores in probs.items():
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores).all(axis=1)).sum())
            raise DataError(
                f"{model} answers NaN or infinity for {bad} {split} image(s): it is broken "
                "(train it again); nothing is written or registered"
            )


def score(splits: dict[str, Split], probs: dict[str, np.ndarray], classes: list[str]) -> dict[str, Any]:
    """All metrics on val and test (metrics.json): top-1 on each, per-class on test, scenes on both."""
    val, test = splits["val"], splits["test"]
    both = np.concatenate([val.labels, test.labels]), np.concatenate([probs["val"], probs["test"]])
    return {
        "val_accuracy": top1(val.labels, probs["val"]),
        "test_accuracy": top1(test.labels, probs["test"]),
        "test_per_class": per_class(test.labels, probs["test"], classes),
        "scenes": scenes(*both, classes),
    }


def scenes(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """On images with several characters: per-character recall at 0.5, and exact-set accuracy."""
    multi = labels.sum(axis=1) > 1
    if not multi.any():
        return {"count": 0}
    truth, said = labels[multi] > 0.5, probs[multi] >= THRESHOLD
    recall = {name: float(said[truth[:, i], i].mean()) if truth[:, i].any() else None for i, name in enumerate(classes)}
    return {
        "count": int(multi.sum()),
        "exact_set_accuracy": float((truth == said).all(axis=1).mean()),
        "mean_recall": float(said[truth].mean()),
        "recall": recall,
    }
