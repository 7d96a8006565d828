"""Which decoded images prepare keeps: exact duplicates (same bytes) dropped, keeping the first by sorted
path (if the copies carry different labels the kept one gets their union: the same picture filed under
two characters shows both); data too small to split refused; the exclusion list's images left out after
the split (the rest keep theirs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from op_classifier.data.raw import EXCLUDED, Inventory, in_class_order, skip_record
from op_classifier.data.splits import MIN_IMAGES_PER_CLASS
from op_classifier.errors import DataError


@dataclass
class Kept:
    """The usable, deduplicated images (parallel lists, sorted by path)."""

    rows: list[int]  # row of each image in the staging array
    paths: list[str]
    labels: list[tuple[str, ...]]
    sha256: list[str]


def deduplicate(
    inventory: Inventory, digests: Sequence[str | None], reasons: Sequence[str | None]
) -> tuple[Kept, list[dict], list[dict]]:
    """Keep the first decodable file (by path) of each content; merge the labels of its copies."""
    first: dict[str, int] = {}  # sha256 -> position in kept
    kept = Kept(rows=[], paths=[], labels=[], sha256=[])
    duplicates: list[dict] = []
    merged: dict[int, set[str]] = {}
    for row, (path, labels) in enumerate(zip(inventory.paths, inventory.labels)):
        digest = digests[row]
        if reasons[row] is not None or digest is None:
            continue
        if digest in first:
            position = first[digest]
            original = kept.paths[position]
            duplicates.append(
                {"path": path, "duplicate_of": original, "labels": list(labels), "reason": f"duplicate of {original}"}
            )
            if set(labels) - set(kept.labels[position]):
                merged.setdefault(position, set(kept.labels[position])).update(labels)
            continue
        first[digest] = len(kept.paths)
        kept.rows.append(row)
        kept.paths.append(path)
        kept.labels.append(labels)
        kept.sha256.append(digest)
    for position, labels in merged.items():
        kept.labels[position] = in_class_order(labels, inventory.classes)
    notes = [{"path": kept.paths[p], "labels": list(kept.labels[p])} for p in sorted(merged)]
    return kept, duplicates, notes


def check_class_sizes(kept: Kept, inventory: Inventory, unreadable: list[dict], raw: Path) -> list[str]:
    """Refuse data that cannot be split; return the classes (and folders) with no image at all."""
    if not kept.paths:
        found = len(inventory.paths) + len(inventory.skipped)
        first = (inventory.skipped + unreadable)[:1]
        example = f"; e.g. {first[0]['path']}: {first[0]['reason']}" if first else ""
        raise DataError(f"no usable image in {raw} ({found} files found{example})")
    counts = class_counts(kept.labels, inventory.classes)
    few = {name: n for name, n in counts.items() if 0 < n < MIN_IMAGES_PER_CLASS}
    if few:
        listed = ", ".join(f"{name} has {n}" for name, n in few.items())
        raise DataError(
            f"too few images to split: {listed} (need at least {MIN_IMAGES_PER_CLASS} per class, "
            "one each for train, val and test)"
        )
    empty = [name for name, n in counts.items() if n == 0]
    return sorted(set(empty) | set(inventory.empty_folders))


def class_counts(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> dict[str, int]:
    """How many images carry each class."""
    return {name: sum(name in image for image in labels) for name in classes}


def leave_out(
    kept: Kept, splits: list[str], hashes: list, groups: list[int], excluded: dict[str, str]
) -> tuple[Kept, list[str], list, list[int], list[dict]]:
    """The exclusion list's images taken out after the split (the rest keep theirs); their skip records."""
    out = {i for i, path in enumerate(kept.paths) if path in excluded}
    if not out:
        return kept, splits, hashes, groups, []
    records = [
        {**skip_record(kept.paths[i], excluded[kept.paths[i]], EXCLUDED), "split": splits[i]} for i in sorted(out)
    ]
    stay = [i for i in range(len(kept.paths)) if i not in out]
    fields = (kept.rows, kept.paths, kept.labels, kept.sha256)
    kept = Kept(*([column[i] for i in stay] for column in fields))
    return kept, [splits[i] for i in stay], [hashes[i] for i in stay], [groups[i] for i in stay], records
