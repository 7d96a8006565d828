"""What evaluate hands the registry with a model: the champion metric's score (checked before any
tracking, so a typo fails first), the scores the logged model carries, the registered version's
description, and the judge (the paired test against the champion's predictions, paired.judge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from op_classifier.compare import paired
from op_classifier.config import ConfigError
from op_classifier.data.prepared import Split
from op_classifier.metric_names import metric_split
from op_classifier.reports.figures import single_count


def champion_score(flat: dict[str, Any], metric: str) -> float:
    """The flattened metrics' value of tracking.champion_metric; a name evaluate does not report is refused."""
    if metric not in flat:
        raise ConfigError(
            f"tracking.champion_metric: evaluate reports no '{metric}' (e.g. val_accuracy, test_accuracy)"
        )
    return float(flat[metric])


def judge(predictions: Path, metric: str, alpha: float) -> paired.Judge | None:
    """The paired test that promotes this model over the champion, on the champion metric's split."""
    split = metric_split(metric)
    return paired.judge(predictions, split, alpha) if split else None


def model_scores(flat: dict[str, Any]) -> dict[str, float]:
    """What the logged model carries: val and test accuracy and each class's test F1."""
    return {
        key: value for key, value in flat.items() if key in ("val_accuracy", "test_accuracy") or key.endswith(".f1")
    }


def describe(record: dict[str, Any], metrics: dict[str, Any], splits: dict[str, Split]) -> str:
    """A registered version's description: what the model is and how it was scored."""
    classes, size = ", ".join(record["classes"]), record["image_size"]
    data = record.get("dataset") or {}
    scored = ", ".join(
        f"{name}_accuracy {metrics[f'{name}_accuracy']:.4f} on {single_count(split.labels)}"
        for name, split in splits.items()
    )
    return (
        f"Classifies {size}x{size} RGB images (0..255 pixels) into {classes}, one sigmoid per class. "
        f"Trained in run {record.get('run_id')}; scored by the evaluate stage on data "
        f"'{data.get('name', 'prepared')}' (digest {data.get('digest', '?')}), top-1: {scored}."
    )
