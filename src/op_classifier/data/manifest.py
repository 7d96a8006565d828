"""Building prepare's manifest.json (what a later stage or a person needs to know about the prepared data:
every file's split, what was skipped and why, the duplicates, the near-duplicate groups, the warnings) and
the one line the stage prints about it. Reading it back: prepared.load_manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from op_classifier.config import Config, DataConfig
from op_classifier.data.kept import Kept, class_counts
from op_classifier.data.near_duplicates import HASH_NAME, groups_of, max_distance
from op_classifier.data.raw import BAD_LABELS, BAD_NAME, LINK_OUT, UNLABELLED, UNREADABLE
from op_classifier.data.splits import SPLITS

MANIFEST = "manifest.json"


def build_manifest(
    cfg: Config,
    classes: list[str],
    kept: Kept,
    splits: Sequence[str],
    skipped: list[dict],
    duplicates: list[dict],
    warnings: dict,
) -> dict:
    """Everything a later stage or a person needs to know about the prepared data."""
    files, index = [], dict.fromkeys(SPLITS, 0)
    for path, labels, digest, split in zip(kept.paths, kept.labels, kept.sha256, splits):
        files.append({"path": path, "split": split, "index": index[split], "labels": list(labels), "sha256": digest})
        index[split] += 1
    by_split = {split: [kept.labels[i] for i, name in enumerate(splits) if name == split] for split in SPLITS}
    return {
        "classes": classes,
        "image_size": cfg.data.image_size,
        "seed": cfg.seed,
        "val_fraction": cfg.data.val_fraction,
        "test_fraction": cfg.data.test_fraction,
        "counts": {split: len(by_split[split]) for split in SPLITS},
        "class_counts": {split: class_counts(by_split[split], classes) for split in SPLITS},
        "multi_label_counts": {split: sum(len(image) > 1 for image in by_split[split]) for split in SPLITS},
        "files": files,
        "skipped": sorted(skipped, key=lambda entry: (entry["path"] or "", entry.get("line", 0))),
        "duplicates": duplicates,
        "warnings": {**warnings, "classes_missing_from_split": _missing_from_splits(by_split, classes)},
    }


def _missing_from_splits(by_split: dict[str, list], classes: Sequence[str]) -> dict[str, list[str]]:
    # A class with images can still miss a split when they are all multi-label; say so rather than hide it.
    present = {split: {name for image in by_split[split] for name in image} for split in SPLITS}
    anywhere = set().union(*present.values())
    missing = {split: [name for name in classes if name in anywhere - present[split]] for split in SPLITS}
    return {split: names for split, names in missing.items() if names}


def near_duplicates_entry(
    files: list[dict], hashes: Sequence[bytes | None], groups: Sequence[int], data: DataConfig
) -> dict:
    """The manifest's near_duplicates: each group's split, paths and largest distance; files get their group."""
    listed = []
    for number, members in enumerate(groups_of(groups)):
        for member in members:
            files[member]["near_duplicate_group"] = number
        paths = [files[member]["path"] for member in members]
        split = files[members[0]]["split"]
        listed.append({"group": number, "split": split, "max_distance": max_distance(hashes, members), "paths": paths})
    return {
        "distance": data.near_duplicates or 0,
        "hash": HASH_NAME if data.near_duplicates else None,
        "images": sum(len(group["paths"]) for group in listed),
        "groups": listed,
    }


def write_manifest(out: Path, manifest: dict) -> None:
    """out/manifest.json, indented, UTF-8 (names that are not UTF-8 never get this far)."""
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")


def summary_line(manifest: dict) -> str:
    """What prepare did, for its one line: the images kept and split, what was skipped, the groups."""
    counts = manifest["counts"]
    kinds = [entry["kind"] for entry in manifest["skipped"]]
    total = sum(counts.values())
    split = f"{counts['train']:,}/{counts['val']:,}/{counts['test']:,}"
    text = f"{total:,} images of {len(manifest['classes'])} classes, split {split}"
    skipped = [
        f"{n:,} {what}"
        for n, what in (
            (kinds.count(UNREADABLE), "unreadable"),
            (len(manifest["duplicates"]), "duplicates"),
            (kinds.count(UNLABELLED), "unlabelled"),
            (kinds.count(BAD_LABELS), "bad labels-file lines"),
            (kinds.count(LINK_OUT), "links not followed"),
            (kinds.count(BAD_NAME), "non-UTF-8 names"),
        )
        if n
    ]
    text += f"; skipped {', '.join(skipped)}" if skipped else ""
    near = manifest["near_duplicates"]
    if near["groups"]:
        text += f"; {near['images']:,} near-duplicates in {len(near['groups']):,} groups"
    return text


def warning_lines(manifest: dict) -> list[str]:
    """What a user must not miss, a note each: classes left empty, images relabelled by copies."""
    notes = []
    if manifest["warnings"]["empty_classes"]:
        notes.append(f"note: classes with no image: {', '.join(manifest['warnings']['empty_classes'])}")
    merged = manifest["warnings"].get("merged_duplicate_labels") or []
    if merged:  # a copy (or a link) in another class's folder adds that class: say so, not only in the manifest
        notes.append(f"note: {len(merged):,} relabelled by copies in other class folders ({relabellings(merged)})")
    return notes


def relabellings(merged: list[dict], most: int = 6) -> str:
    """Every relabelling, grouped by folder and the labels it now has: `Luffy/ now Luffy+Nami: 17`."""
    groups: dict[str, int] = {}
    for note in merged:
        folder = str(Path(note["path"]).parent)
        key = f"{folder}/ now {'+'.join(note['labels'])}"
        groups[key] = groups.get(key, 0) + 1
    named = [f"{key}: {count:,}" for key, count in sorted(groups.items(), key=lambda item: -item[1])]
    more = f", and {len(named) - most} more groups (manifest: warnings)" if len(named) > most else ""
    return ", ".join(named[:most]) + more
