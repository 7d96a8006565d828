"""The stratified train/val/test split: every class (and label set) in every split when it can be."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from op_classifier.config import DataConfig

SPLITS = ("train", "val", "test")

MIN_IMAGES_PER_CLASS = len(SPLITS)  # one each for train, val and test


def assign_splits(labels: Sequence[tuple[str, ...]], data: DataConfig, seed: int) -> list[str]:
    """Stratified, seeded train/val/test assignment of images given in sorted-path order."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(labels)
    for key, members in sorted(strata(labels, data).items()):
        n_val, n_test = split_sizes(len(members), data.val_fraction, data.test_fraction, single=len(key) == 1)
        for rank, position in enumerate(rng.permutation(len(members))):
            if rank < n_val + n_test:
                splits[members[position]] = "val" if rank < n_val else "test"
    return splits


def strata(labels: Sequence[tuple[str, ...]], data: DataConfig) -> dict[tuple[str, ...], list[int]]:
    """Group images by label set; label sets too small to reach val or test share one stratum, key ()."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, image in enumerate(labels):
        groups.setdefault(image, []).append(index)
    smallest = min(data.val_fraction, data.test_fraction)
    pooled = [key for key, members in groups.items() if len(key) > 1 and _round(len(members) * smallest) == 0]
    for key in pooled:
        groups.setdefault((), []).extend(groups.pop(key))
    if () in groups:
        groups[()].sort()
    return groups


def split_sizes(n: int, val_fraction: float, test_fraction: float, single: bool) -> tuple[int, int]:
    """(val, test) sizes of a stratum: rounded fractions, at least one each for a class with enough images."""
    n_val, n_test = _round(n * val_fraction), _round(n * test_fraction)
    if single and n >= MIN_IMAGES_PER_CLASS:
        n_val, n_test = max(1, n_val), max(1, n_test)
    while n_val + n_test >= n and n_val + n_test > 0:  # always leave one to train on
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up: round() would send 2.5 to 2
