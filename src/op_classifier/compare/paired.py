"""Two models scored on the same images, compared paired: accuracy, macro F1, a bootstrap interval, McNemar.

Evaluate writes each image's scores to a predictions file (write_predictions); `op-classifier compare`
and the `significant` promotion read two of them (read_predictions) and compare them on one split.
Accuracy and F1 are top-1 on single-character images, as evaluate measures them.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.errors import DataError

FIXED = ("split", "index", "path", "sha256", "labels")  # then one score column per class
RESAMPLES = 10_000  # bootstrap resamples: the interval's ends did not move across 20 seeds (docs/decisions.md)


@dataclass
class Predictions:
    """One model's scores on val and test: per row its split, image (path, sha256), true labels, scores."""

    classes: list[str]
    split: np.ndarray  # (N,) str
    image: list[tuple[str, str]]  # (path, sha256)
    labels: np.ndarray  # (N, C) multi-hot
    scores: np.ndarray  # (N, C)

    def rows(self, split: str) -> np.ndarray:
        """Indices of the split's rows."""
        return np.flatnonzero(self.split == split)


def per_class(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of each class's top-1 predictions on single-label rows."""
    single = labels.sum(axis=1) == 1
    truth, guess = labels[single].argmax(1), probs[single].argmax(1)
    scores = {}
    for i, name in enumerate(classes):
        tp = float(np.sum((guess == i) & (truth == i)))
        precision = tp / max(np.sum(guess == i), 1)
        recall = tp / max(np.sum(truth == i), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": precision, "recall": recall, "f1": f1}
    return scores


def write_predictions(
    path: Path,
    classes: Sequence[str],
    files: Sequence[Mapping[str, Any]],
    scored: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """One row per val and test image: the manifest's path and sha256, true labels, each class's score."""
    by_place = {(entry["split"], entry["index"]): entry for entry in files}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FIXED, *classes])
        for split, (labels, probs) in scored.items():
            for index, (truth, score) in enumerate(zip(labels, probs)):
                entry = by_place.get((split, index), {})
                named = ";".join(name for name, on in zip(classes, truth) if on > 0.5)
                row = [split, index, entry.get("path", ""), entry.get("sha256", ""), named]
                writer.writerow(row + [f"{value:.6f}" for value in score])


def read_predictions(path: Path, what: str) -> Predictions:
    """A predictions file; a file of another shape is one DataError naming `what` it was for."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            numbered = [(reader.line_num, row) for row in reader]
        classes = header[len(FIXED) :]
        if tuple(header[: len(FIXED)]) != FIXED or not classes:
            raise ValueError(f"its header is not {','.join(FIXED)},<classes...>")
        scores = _scores(numbered, classes)
        rows = [row for _, row in numbered]
        labels = np.array([[name in row[4].split(";") for name in classes] for row in rows], dtype=float)
    except (OSError, UnicodeDecodeError, StopIteration, ValueError, IndexError) as error:
        raise DataError(f"{what}: {path} is not a predictions file written by evaluate ({error})") from None
    return Predictions(classes, np.array([row[0] for row in rows]), [(row[2], row[3]) for row in rows], labels, scores)


def _scores(numbered: Sequence[tuple[int, list[str]]], classes: Sequence[str]) -> np.ndarray:
    """(rows, classes) scores, each a sigmoid's probability in [0, 1]; a row of another width is refused.

    A ValueError names the first bad line: NaN, inf or -5 compared as scores, a short row was a reshape
    traceback, and rows each one score short were read as fewer rows (issue 35)."""
    width = len(FIXED) + len(classes)
    for line, row in numbered:
        if len(row) != width:
            raise ValueError(f"line {line} has {len(row)} fields, its header {width}")
    scores = np.array([[float(value) for value in row[len(FIXED) :]] for _, row in numbered], dtype=float)
    scores = scores.reshape(len(numbered), len(classes))
    bad = np.argwhere(~((scores >= 0) & (scores <= 1)))  # NaN fails both comparisons
    if len(bad):
        row, column = bad[0]
        score = numbered[row][1][len(FIXED) + column][:24]  # the text as written, not a float's rounding
        raise ValueError(f"line {numbered[row][0]}: {classes[column]}'s score {score} is not a probability in [0, 1]")
    return scores


Judge = Callable[[Path], dict[str, Any]]  # tracking.Judge: what Tracker.register takes


def judge(predictions: Path, split: str, alpha: float) -> Judge:
    """This model's paired test against another's predictions file: B (this one) against A (that one)."""

    def against(theirs: Path) -> dict[str, Any]:
        return compare(
            read_predictions(theirs, "the champion"), read_predictions(predictions, "this model"), split, alpha
        )

    return against


def compare(
    a: Predictions, b: Predictions, split: str, alpha: float = 0.05, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """B against A on one split's single-character images: each score, B - A with a 95% paired
    bootstrap interval, and the exact McNemar p-value on the images exactly one of them got right."""
    rows_a, rows_b = a.rows(split), b.rows(split)
    _check_same_images(a, b, rows_a, rows_b, split)
    labels = a.labels[rows_a]
    single = labels.sum(axis=1) == 1
    truth = labels[single].argmax(1)
    pa, pb = a.scores[rows_a][single], b.scores[rows_b][single]
    right_a, right_b = pa.argmax(1) == truth, pb.argmax(1) == truth
    f1 = _macro_f1(truth, len(a.classes))
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    p_value = _mcnemar(only_a, only_b)
    accuracy = (float(right_a.mean()), float(right_b.mean()))
    macro = (f1(pa.argmax(1)), f1(pb.argmax(1)))
    rng = np.random.default_rng(seed)
    return {
        "split": split,
        "images": int(single.sum()),
        "rows": len(rows_a),
        "accuracy": {"a": accuracy[0], "b": accuracy[1], "difference": accuracy[1] - accuracy[0]},
        "macro_f1": {"a": macro[0], "b": macro[1], "difference": macro[1] - macro[0]},
        "accuracy_interval": _interval(right_b.astype(float) - right_a, np.mean, resamples, rng),
        "macro_f1_interval": _interval_of_indices(
            len(truth), lambda i: f1(pb[i].argmax(1), i) - f1(pa[i].argmax(1), i), resamples, rng
        ),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": p_value,
        "alpha": alpha,
        "verdict": _verdict(accuracy[1] - accuracy[0], p_value, alpha),
    }


def _check_same_images(a: Predictions, b: Predictions, rows_a: np.ndarray, rows_b: np.ndarray, split: str) -> None:
    if a.classes != b.classes:
        raise DataError(f"the two models have different classes ({', '.join(a.classes)} / {', '.join(b.classes)})")
    if not len(rows_a):
        raise DataError(f"no {split} images in the predictions")
    if [a.image[i] for i in rows_a] != [b.image[i] for i in rows_b] or not np.array_equal(
        a.labels[rows_a], b.labels[rows_b]
    ):
        raise DataError(
            f"the two models were scored on different {split} images (other data or another split): "
            "their scores are not comparable"
        )


def _macro_f1(truth: np.ndarray, classes: int) -> Any:
    """A function of (guesses, optional row subset) -> macro F1 against `truth`."""
    names = [str(i) for i in range(classes)]
    eye = np.eye(classes)

    def score(guess: np.ndarray, subset: np.ndarray | None = None) -> float:
        kept = truth if subset is None else truth[subset]
        return float(np.mean([c["f1"] for c in per_class(eye[kept], eye[guess], names).values()]))

    return score


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """The exact McNemar p-value of two models' right/wrong answers on the same images."""
    return _mcnemar(int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a)))


def _mcnemar(only_a: int, only_b: int) -> float:
    """Exact McNemar: a two-sided binomial test of the discordant pairs against 1/2."""
    from scipy.stats import binomtest

    return 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def _interval(differences: np.ndarray, statistic: Any, resamples: int, rng: np.random.Generator) -> list[float]:
    """The 95% percentile bootstrap interval of statistic over per-image differences."""
    from scipy.stats import bootstrap

    if np.all(differences == differences[0]):  # no spread to resample: the interval is the point
        return [float(differences[0])] * 2
    found = bootstrap((differences,), statistic, n_resamples=resamples, method="percentile", random_state=rng)
    return [float(found.confidence_interval.low), float(found.confidence_interval.high)]


def _interval_of_indices(count: int, statistic: Any, resamples: int, rng: np.random.Generator) -> list[float]:
    """The 95% percentile bootstrap interval of a statistic of resampled image indices (paired by index)."""
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning when every resample agrees
        found = bootstrap(
            (np.arange(count),),
            statistic,
            n_resamples=resamples,
            method="percentile",
            vectorized=False,
            random_state=rng,
        )
    low, high = found.confidence_interval.low, found.confidence_interval.high
    point = statistic(np.arange(count))
    return [float(point if np.isnan(low) else low), float(point if np.isnan(high) else high)]


def _verdict(difference: float, p_value: float, alpha: float) -> str:
    if p_value >= alpha:
        return f"no significant difference (McNemar p = {p_value:.3g} >= {alpha}): within noise"
    return f"{'B' if difference > 0 else 'A'} is better (McNemar p = {p_value:.3g} < {alpha})"


def table(result: Mapping[str, Any], a: str, b: str) -> str:
    """The comparison as lines a person reads."""
    acc, f1 = result["accuracy"], result["macro_f1"]
    lo, hi = result["accuracy_interval"]
    flo, fhi = result["macro_f1_interval"]
    width = max(len(a), len(b), 12)
    return "\n".join(
        [
            f"{result['split']}: {result['images']} single-character images of {result['rows']}, the same for both",
            f"{'':<{width + 4}} {'accuracy':>9} {'macro F1':>9}",
            f"A   {a:<{width}} {acc['a']:>9.4f} {f1['a']:>9.4f}",
            f"B   {b:<{width}} {acc['b']:>9.4f} {f1['b']:>9.4f}",
            f"{'B - A':<{width + 4}} {acc['difference']:>+9.4f} {f1['difference']:>+9.4f}",
            f"{'95% interval':<{width + 4}} [{lo:+.4f}, {hi:+.4f}]  [{flo:+.4f}, {fhi:+.4f}]  (paired bootstrap)",
            f"McNemar exact p = {result['mcnemar_p']:.4g}: only A right on {result['only_a_right']}, "
            f"only B right on {result['only_b_right']}",
            f"verdict: {result['verdict']}",
        ]
    )
