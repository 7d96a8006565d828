"""The stratified train/val/test split: every class (and label set) in every split when it can be, and
every near-duplicate group whole in one split."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from op_classifier.config import DataConfig

SPLITS = ("train", "val", "test")

MIN_IMAGES_PER_CLASS = len(SPLITS)  # one each for train, val and test


def assign_splits(
    labels: Sequence[tuple[str, ...]], data: DataConfig, seed: int, groups: Sequence[int] | None = None
) -> list[str]:
    """Stratified, seeded train/val/test assignment of images given in sorted-path order; the images of one
    group (groups[i] names image i's; None: each image alone) go whole into one split."""
    rng = np.random.default_rng(seed)
    units = group_members(groups if groups is not None else range(len(labels)))
    keys = [unit_labels(labels, unit) for unit in units]
    splits = ["train"] * len(labels)
    for key, members in sorted(strata(keys, data, [len(unit) for unit in units]).items()):
        images = sorted(image for m in members for image in units[m])
        n_val, n_test = split_sizes(len(images), data.val_fraction, data.test_fraction, single=len(key) == 1)
        room = {"val": n_val, "test": n_test}
        for unit in _in_drawn_order([units[m] for m in members], images, rng):
            # A group goes where it brings a split closer to its size (a single image: wherever room is
            # left), so val and test fill first, as far as whole groups allow; the rest trains.
            split = next((name for name in ("val", "test") if len(unit) < 2 * room[name]), "train")
            if split != "train":
                room[split] -= len(unit)
            for image in unit:
                splits[image] = split
    return splits


def _in_drawn_order(units: list[list[int]], images: list[int], rng: np.random.Generator) -> list[list[int]]:
    """The units in the order of their first image in a seeded shuffle of all the images: images alone
    are drawn as they were before groups existed, and one group moves few others."""
    rank = {image: r for r, image in enumerate(images[position] for position in rng.permutation(len(images)))}
    return sorted(units, key=lambda unit: min(rank[image] for image in unit))


def group_members(groups: Sequence[int]) -> list[list[int]]:
    """The images of each group, in order of each group's first image."""
    members: dict[int, list[int]] = {}
    for image, group in enumerate(groups):
        members.setdefault(group, []).append(image)
    return list(members.values())


def unit_labels(labels: Sequence[tuple[str, ...]], unit: Sequence[int]) -> tuple[str, ...]:
    """The label set a group is stratified by: the one most of its images carry (ties: the first image's)."""
    return Counter(labels[image] for image in unit).most_common(1)[0][0]


def strata(
    labels: Sequence[tuple[str, ...]], data: DataConfig, sizes: Sequence[int] | None = None
) -> dict[tuple[str, ...], list[int]]:
    """Group images (or groups of sizes[i] images) by label set; label sets too small to reach val or test
    share one stratum, key ()."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, image in enumerate(labels):
        groups.setdefault(image, []).append(index)
    smallest = min(data.val_fraction, data.test_fraction)
    count = (lambda members: len(members)) if sizes is None else (lambda members: sum(sizes[m] for m in members))
    pooled = [key for key, members in groups.items() if len(key) > 1 and _round(count(members) * smallest) == 0]
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
