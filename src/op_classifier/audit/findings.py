"""What cleanlab's Datalab finds in a prepared data set: label issues (with the label it suggests),
outliers, near-duplicates and class imbalance, from a backbone's features and out-of-sample
probabilities of K-fold heads on them (a logistic regression each, trained on the other folds)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from op_classifier.errors import DataError

KINDS = ("label", "outlier", "near_duplicate", "class_imbalance")  # Datalab's issue types the audit asks for
HEAD_C = 0.1  # the heads' inverse regularisation: features are 1280-wide, a split has hundreds of images


@dataclass(frozen=True)
class Image:
    """One prepared image as the manifest names it."""

    path: str
    split: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """One issue of one image: Datalab's score (0..1, lower is worse), its given and suggested label."""

    path: str
    split: str
    kind: str
    score: float
    given: str
    suggested: str
    note: str


@dataclass
class Audit:
    """The findings, worst first within each kind, and what was looked at."""

    findings: list[Finding]
    audited: int  # single-label images, the ones Datalab scores
    left_out: int  # multi-label images (labels.csv scenes): no single label to check
    accuracy: float  # the K-fold heads' out-of-sample top-1 accuracy


def out_of_sample(x: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a head trained on the other folds (stratified, seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(C=HEAD_C, max_iter=2000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(head, x, labels, cv=split, method="predict_proba")


def check_auditable(images: Sequence[Image], folds: int) -> str | None:
    """Why these images cannot be audited (None: they can): two classes, each with at least `folds` images."""
    counts = Counter(image.labels[0] for image in images if len(image.labels) == 1)
    if len(counts) < 2:
        return f"the audit needs single-label images of at least two classes, got {len(counts)}"
    rare = min(counts, key=counts.get)
    if counts[rare] < folds:
        return f"class {rare} has {counts[rare]} single-label image(s), fewer than audit.folds ({folds})"
    return None


def audit(images: Sequence[Image], x: np.ndarray, folds: int, seed: int) -> Audit:
    """Datalab's label, outlier, near-duplicate and class-imbalance issues of the single-label images."""
    from cleanlab import Datalab

    why = check_auditable(images, folds)
    if why:
        raise DataError(why)
    single = [i for i, image in enumerate(images) if len(image.labels) == 1]
    given = np.array([images[i].labels[0] for i in single])
    names = sorted(set(given))  # Datalab's column order for pred_probs
    labels = np.searchsorted(names, given)
    probs = out_of_sample(x[single], labels, folds, seed)
    lab = Datalab(data={"label": given}, label_name="label", verbosity=0)
    lab.find_issues(features=x[single], pred_probs=probs, issue_types={kind: {} for kind in KINDS})
    kept = [images[i] for i in single]
    findings = [finding for kind in KINDS for finding in _of_kind(lab, kind, kept)]
    accuracy = float((probs.argmax(1) == labels).mean())
    return Audit(findings, len(single), len(images) - len(single), accuracy)


def _of_kind(lab: Any, kind: str, images: Sequence[Image]) -> list[Finding]:
    """One kind's flagged images, worst (lowest score) first."""
    table = lab.get_issues(kind)
    flagged = table[table[f"is_{kind}_issue"]].sort_values(f"{kind}_score")
    out = []
    for row, found in flagged.iterrows():
        image = images[row]
        suggested = str(found["predicted_label"]) if kind == "label" else ""
        note = _near(image, found["near_duplicate_sets"], images) if kind == "near_duplicate" else ""
        out.append(
            Finding(image.path, image.split, kind, float(found[f"{kind}_score"]), image.labels[0], suggested, note)
        )
    return out


def _near(image: Image, others: Sequence[int], images: Sequence[Image]) -> str:
    """Which images this one nearly duplicates, and whether any of them sits in another split."""
    paths = [f"{images[i].split}/{images[i].path}" for i in others]
    crosses = any(images[i].split != image.split for i in others)
    return (
        ("crosses splits: " if crosses else "") + "near " + " | ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
    )


def summary(found: Audit, classes: Sequence[str]) -> dict[str, Any]:
    """Counts per kind and per class (a DVC metric), and what was audited."""
    per_class = {name: {kind: 0 for kind in KINDS} for name in classes}
    for finding in found.findings:
        per_class.setdefault(finding.given, {kind: 0 for kind in KINDS})[finding.kind] += 1
    crossing = sum(1 for f in found.findings if f.kind == "near_duplicate" and f.note.startswith("crosses splits"))
    return {
        "audited": found.audited,
        "left_out_multi_label": found.left_out,
        "out_of_sample_accuracy": round(found.accuracy, 4) if math.isfinite(found.accuracy) else None,
        **{kind: sum(1 for f in found.findings if f.kind == kind) for kind in KINDS},
        "near_duplicate_across_splits": crossing,
        "per_class": per_class,
    }
