"""Pictures of a trained model's behaviour, as PNG files a person looks at (attached to its MLflow run).

Pure matplotlib on arrays and CSVs the stages already wrote: no tracking, no model, no config.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.data.prepared import single_label


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history_csv: Path, out: Path) -> Path | None:
    """Loss and accuracy per epoch, training beside validation; None without a history."""
    if not history_csv.is_file():
        return None
    with history_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    plt = pyplot()
    epochs = [int(row["epoch"]) + 1 for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for name, style in ((metric, "-"), (f"val_{metric}", "--")):
            if name in rows[0]:
                ax.plot(epochs, [float(row[name]) for row in rows], style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    return save(fig, plt, out)


def confusion_matrix(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], out: Path, title: str = "test"
) -> Path:
    """Counts of actual (rows) against top-1 predicted (columns) on single-label images."""
    plt = pyplot()
    single = single_label(labels)
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(counts, (labels[single].argmax(1), probs[single].argmax(1)), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(counts, cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        ax.text(col, row, str(value), ha="center", va="center", color="white" if value > counts.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"confusion matrix ({title}, {single_count(labels)})")
    return save(fig, plt, out)


def single_count(labels: np.ndarray) -> str:
    """How many images a top-1 figure counts, and of how many the split holds (scenes are not counted)."""
    single = int(single_label(labels).sum())
    return f"{single} single-character images" + (f" of {len(labels)}" if single < len(labels) else "")


def per_class_scores(scores: dict[str, dict[str, float]], out: Path) -> Path:
    """Precision, recall and F1 of each class as grouped bars."""
    plt = pyplot()
    names = list(scores)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    for i, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [scores[n][metric] for n in names], 0.27, label=metric)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.25)  # room above the bars: the legend covered the last class's at 1.05
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("per-class scores (test)")
    ax.legend(loc="upper center", ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, plt, out)


def seed_scores(scores: dict[str, list[float]], seeds: Sequence[int], out: Path) -> Path:
    """Each metric's score per seed as points, with their mean as a line: the spread a comparison faces."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(scores) + 2), 4))
    for i, values in enumerate(scores.values()):
        ax.scatter([i] * len(values), values, zorder=3)
        for seed, value in zip(seeds, values):
            ax.annotate(str(seed), (i, value), xytext=(6, 0), textcoords="offset points", fontsize=8, va="center")
        ax.hlines(np.mean(values), i - 0.25, i + 0.25, colors="black")
    ax.set_xticks(range(len(scores)), list(scores))
    ax.set_xlim(-0.6, len(scores) - 0.4)
    ax.set_title(f"{len(seeds)} seeds: each point a seed, the bar their mean")
    ax.grid(axis="y", alpha=0.3)
    return save(fig, plt, out)


def worst_classified(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], out: Path, count: int = 16
) -> Path | None:
    """The single-label images whose true class got the lowest probability, with what the model said."""
    rows = np.flatnonzero(single_label(labels))
    if len(rows) == 0:
        return None
    truth = labels[rows].argmax(1)
    worst = rows[np.argsort(probs[rows, truth])[:count]]
    plt = pyplot()
    side = int(np.ceil(np.sqrt(len(worst))))
    fig, axes = plt.subplots(side, side, figsize=(2.4 * side, 2.6 * side), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, worst):
        actual, said = int(labels[row].argmax()), int(probs[row].argmax())
        ax.imshow(np.asarray(images[row]))
        ax.set_title(
            f"{classes[actual]} → {classes[said]}\np({classes[actual]})={probs[row, actual]:.2f}",
            fontsize=8,
            color="black" if actual == said else "firebrick",
        )
    fig.suptitle("worst-classified validation images (actual → predicted)")
    return save(fig, plt, out)


def save(fig: Any, plt: Any, out: Path) -> Path:
    """Write the figure as a PNG and close it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
