"""The names fit() reports, in one place that needs no Keras: model.py names its metrics from these,
config.py checks train.monitor and tuner.objective against them when the config is composed."""

from __future__ import annotations

import re
from collections.abc import Sequence

LOSS = "loss"
ACCURACY = "accuracy"  # top-1 accuracy on single-label rows
AUC = "auc"  # multi-label AUC
PER_CLASS = ("precision", "recall")  # reported once per class, as <metric>_<class name>
VALIDATION_PREFIX = "val_"

_CLASS_SPECIFIC = re.compile(rf"^({re.escape(VALIDATION_PREFIX)})?({'|'.join(PER_CLASS)})_.+$")


def per_class(metric: str, class_name: str) -> str:
    """The name a per-class metric reports for one class."""
    return f"{metric}_{class_name}"


def metric_names(class_names: Sequence[str]) -> list[str]:
    """Every name fit() reports for training, the val_ ones included."""
    names = [LOSS, ACCURACY, AUC] + [per_class(metric, name) for name in class_names for metric in PER_CLASS]
    return names + [f"{VALIDATION_PREFIX}{name}" for name in names]


def is_reported(name: str, class_names: Sequence[str] | None) -> bool:
    """Whether fit() reports `name`; with no class list yet, any well-formed per-class name counts."""
    if class_names is not None:
        return name in metric_names(class_names)
    return name in metric_names(()) or bool(_CLASS_SPECIFIC.match(name))


def describe(class_names: Sequence[str] | None) -> str:
    """The reported names, for an error message."""
    return ", ".join(metric_names(class_names if class_names is not None else ["<class>"]))


def is_loss(name: str) -> bool:
    """Lower is better for a loss, higher for every other reported metric."""
    return name.removeprefix(VALIDATION_PREFIX) == LOSS


def metric_split(metric: str) -> str | None:
    """The split a champion metric is measured on (val_accuracy: val), None for other metrics."""
    split, _, rest = metric.partition("_")
    return split if split in ("val", "test") and rest == "accuracy" else None
