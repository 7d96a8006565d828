"""The prepare stage: raw image folders -> deduplicated, stratified, memory-mappable train/val/test arrays.

What counts as an image of which class, and what is set aside: raw.py (the raw data contract).
The split: splits.py. The output appears whole or not at all: files.staged_output.

Exact duplicates (same bytes) are dropped before splitting, keeping the first by sorted path; if
the copies carry different labels the kept one gets their union (the same picture filed under two
characters shows both), and manifest.json lists that under warnings. Near-duplicates (perceptual
hashes within data.near_duplicates bits: data/near_duplicates.py) form groups, each whole in one
split; manifest.json lists the groups.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from op_classifier.config import Config, DataConfig
from op_classifier.data import arrays
from op_classifier.data.images import ImageError, decode_image, read_file
from op_classifier.data.near_duplicates import HASH_NAME, group_ids, groups_of, image_hash, max_distance
from op_classifier.data.raw import (
    BAD_LABELS,
    BAD_NAME,
    EXCLUDED,
    LINK_OUT,
    UNLABELLED,
    UNREADABLE,
    Inventory,
    in_class_order,
    scan,
    skip_record,
)
from op_classifier.data.splits import MIN_IMAGES_PER_CLASS, SPLITS, assign_splits
from op_classifier.errors import DataError
from op_classifier.files import chunk_size, cpu_count, staged_output, worker_pool

MANIFEST = "manifest.json"
_COPY_ROWS = 256  # rows copied per step from the staging array, so memory stays bounded


@dataclass
class Kept:
    """The usable, deduplicated images (parallel lists, sorted by path)."""

    rows: list[int]  # row of each image in the staging array
    paths: list[str]
    labels: list[tuple[str, ...]]
    sha256: list[str]


def run(cfg: Config) -> dict:
    """Prepare paths.raw into paths.prepared (arrays + manifest.json) and return a summary."""
    started = time.perf_counter()
    raw, prepared = Path(cfg.paths.raw), Path(cfg.paths.prepared)
    inventory = scan(raw, cfg.data)
    with staged_output(prepared) as out:
        manifest = prepare_into(out, raw, inventory, cfg)
    seconds = time.perf_counter() - started
    print(summary_line(manifest, prepared / MANIFEST), file=sys.stderr)
    return {
        **manifest["counts"],
        "classes": len(manifest["classes"]),
        "skipped": len(manifest["skipped"]),
        "duplicates": len(manifest["duplicates"]),
        "relabelled": len(manifest["warnings"]["merged_duplicate_labels"]),
        "near_duplicate_groups": len(manifest["near_duplicates"]["groups"]),
        "near_duplicate_images": manifest["near_duplicates"]["images"],
        "seconds": round(seconds, 2),
        "images_per_second": round(len(inventory.paths) / max(seconds, 1e-9), 1),
        "manifest": str(prepared / MANIFEST),
    }


def prepare_into(out: Path, raw: Path, inventory: Inventory, cfg: Config) -> dict:
    """Decode, deduplicate, split and write everything into the (empty) folder out; return the manifest."""
    staging = out / "_decoded.npy"
    digests, hashes, reasons = decode_all(raw, inventory.paths, staging, cfg.data)
    kept, duplicates, merged = deduplicate(inventory, digests, reasons)
    unreadable = [skip_record(path, why, UNREADABLE) for path, why in zip(inventory.paths, reasons) if why is not None]
    empty = check_class_sizes(kept, inventory, unreadable, raw)
    kept_hashes = [hashes[row] for row in kept.rows]
    groups = near_duplicate_groups(kept_hashes, cfg.data.near_duplicates)
    splits = assign_splits(kept.labels, cfg.data, cfg.seed, groups)
    kept, splits, kept_hashes, groups, excluded = leave_out(kept, splits, kept_hashes, groups, inventory.excluded)
    write_arrays(out, staging, kept, splits, inventory.classes)
    staging.unlink()
    warnings = {"empty_classes": empty, "merged_duplicate_labels": merged}
    skipped = inventory.skipped + unreadable + excluded
    manifest = build_manifest(cfg, inventory.classes, kept, splits, skipped, duplicates, warnings)
    manifest["near_duplicates"] = near_duplicates_entry(manifest["files"], kept_hashes, groups, cfg.data)
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (out / MANIFEST).write_text(text, encoding="utf-8")  # names that are not UTF-8 never get this far
    return manifest


def main() -> None:
    """DVC stage entry point: `python -m op_classifier.stages.prepare` with params.yaml."""
    from op_classifier.runner import stage_main

    stage_main(run)


# --- what the raw folder holds ---------------------------------------------------------------------


# --- decoding ----------------------------------------------------------------------------------------


def decode_all(
    raw: Path, paths: Sequence[str], staging: Path, data: DataConfig
) -> tuple[list[str | None], list[bytes | None], list[str | None]]:
    """Decode every file over all cores into the staging array; return per-file sha256, perceptual hash
    (None when data.near_duplicates is off) and skip reason."""
    size = data.image_size
    arrays.create(staging, (len(paths), size, size, 3))  # the workers write their rows into it
    digests: list[str | None] = [None] * len(paths)
    hashes: list[bytes | None] = [None] * len(paths)
    reasons: list[str | None] = [None] * len(paths)
    if not paths:
        return digests, hashes, reasons
    job = partial(
        _decode_file,
        size=size,
        max_pixels=data.max_image_pixels,
        max_bytes=data.max_file_mb * 2**20,
        perceptual=bool(data.near_duplicates),
    )
    workers = min(cpu_count(), len(paths))
    jobs = ((index, str(raw / path)) for index, path in enumerate(paths))
    pool = worker_pool(workers, initializer=_start_worker, initargs=(str(staging),))
    with pool, _progress(len(paths)) as bar:
        for index, digest, phash, reason in pool.imap_unordered(job, jobs, chunksize=chunk_size(len(paths), workers)):
            digests[index], hashes[index], reasons[index] = digest, phash, reason
            bar.update()
    return digests, hashes, reasons


# Each worker's handle on the staging array: writing rows there spares pickling every image to the parent.
_staging: arrays.RowFile | None = None


def _start_worker(staging: str) -> None:
    global _staging
    _staging = arrays.RowFile(Path(staging), writable=True)


def _decode_file(
    job: tuple[int, str], size: int, max_pixels: int, max_bytes: int, perceptual: bool
) -> tuple[int, str | None, bytes | None, str | None]:
    """Worker: decode (index, path) into row index of the staging array; return (index, sha256, perceptual
    hash if asked, skip reason)."""
    index, path = job
    try:
        data = read_file(Path(path), max_bytes)  # regular files only, bounded, sniffed before read whole
    except ImageError as error:
        return index, None, None, str(error)
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels = decode_image(data, size, max_pixels)
    except ImageError as error:
        return index, digest, None, str(error)
    _staging.write(index, pixels[None])
    # Hashed from the pixels the model sees (oriented, over white, resized): no second decode.
    return index, digest, image_hash(pixels) if perceptual else None, None


def _progress(total: int) -> tqdm:
    # disable=None: a bar on a terminal, none in logs and CI where it would be a wall of lines.
    return tqdm(total=total, desc="prepare", unit="img", file=sys.stderr, leave=False, disable=None)


# --- duplicates and class sizes ------------------------------------------------------------------------


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


# --- near-duplicates ---------------------------------------------------------------------------------------


def near_duplicate_groups(hashes: Sequence[bytes | None], distance: int | None) -> list[int]:
    """Each kept image's near-duplicate group (data.near_duplicates 0 or null: every image alone)."""
    if not distance:
        return list(range(len(hashes)))
    return group_ids(hashes, distance)


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


# --- the split -------------------------------------------------------------------------------------------


# --- output ------------------------------------------------------------------------------------------


def write_arrays(out: Path, staging: Path, kept: Kept, splits: Sequence[str], classes: Sequence[str]) -> None:
    """Write <split>/images.npy (copied in chunks from the staging array) and <split>/labels.npy."""
    with arrays.RowFile(staging) as decoded:
        for split in SPLITS:
            members = [i for i, name in enumerate(splits) if name == split]
            (out / split).mkdir()
            arrays.create(out / split / "images.npy", (len(members), *decoded.shape[1:]))
            with arrays.RowFile(out / split / "images.npy", writable=True) as images:
                for start in range(0, len(members), _COPY_ROWS):
                    rows = [kept.rows[i] for i in members[start : start + _COPY_ROWS]]
                    images.write(start, decoded.read(rows))
            np.save(out / split / "labels.npy", multi_hot([kept.labels[i] for i in members], classes))


def multi_hot(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> np.ndarray:
    """float32 (N, C) targets: 1 where the image shows the class."""
    targets = np.zeros((len(labels), len(classes)), dtype=np.float32)
    column = {name: i for i, name in enumerate(classes)}
    for row, image in enumerate(labels):
        targets[row, [column[name] for name in image]] = 1.0
    return targets


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


def summary_line(manifest: dict, manifest_path: Path) -> str:
    """The one line printed at the end of the stage."""
    counts = manifest["counts"]
    kinds = [entry["kind"] for entry in manifest["skipped"]]
    total = sum(counts.values())
    text = (
        f"prepared {total:,} images (train {counts['train']:,} / val {counts['val']:,} / test {counts['test']:,}), "
        f"{len(manifest['classes'])} classes; skipped {kinds.count(UNREADABLE):,} unreadable, "
        f"{len(manifest['duplicates']):,} duplicates, {kinds.count(UNLABELLED):,} unlabelled"
    )
    others = ((BAD_LABELS, "bad labels-file lines"), (LINK_OUT, "links not followed"), (BAD_NAME, "non-UTF-8 names"))
    for kind, what in others:
        if kinds.count(kind):
            text += f", {kinds.count(kind):,} {what}"
    near = manifest["near_duplicates"]
    if near["distance"]:
        text += f"; {near['images']:,} images in {len(near['groups']):,} near-duplicate groups"
    if manifest["warnings"]["empty_classes"]:
        text += f"; empty: {', '.join(manifest['warnings']['empty_classes'])}"
    merged = manifest["warnings"].get("merged_duplicate_labels") or []
    if merged:  # a copy (or a link) in another class's folder adds that class: say so, not only in the manifest
        text += f"; {len(merged):,} relabelled by copies in other class folders ({relabellings(merged)})"
    return f"{text}: see {manifest_path}"


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


if __name__ == "__main__":
    main()
