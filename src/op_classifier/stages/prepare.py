"""The prepare stage: raw image folders -> deduplicated, stratified, memory-mappable train/val/test arrays.

Raw data contract (paths.raw):
- `<ClassName>/...`: every file anywhere below a top-level class folder (nested folders included)
  is an image of that class. Hidden files and folders (name starting with ".") are ignored.
- Nothing outside paths.raw is read: links (to files or folders) are followed only while they stay
  inside it. Links out, folder links that loop, and names that are not UTF-8 are skipped unread and
  listed in manifest.json with their reason.
- `<data.labels_file>` (optional CSV, header `path,labels`, labels joined by `|`, path relative to
  paths.raw): an entry replaces the folder label, e.g. `scenes/0001.jpg,Luffy|Zoro`. Files outside
  a class folder (e.g. `scenes/`) must be listed there; unlisted ones are skipped and reported.
- `data.classes` fixes the classes and their order; null infers the sorted union of all labels.

Exact duplicates (same bytes) are dropped before splitting, keeping the first by sorted path; if
the copies carry different labels the kept one gets their union (the same picture filed under two
characters shows both), and manifest.json lists that under warnings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from op_classifier import arrays
from op_classifier.config import Config, DataConfig
from op_classifier.errors import DataError
from op_classifier.images import ImageError, decode_image

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
MIN_IMAGES_PER_CLASS = len(SPLITS)  # one each for train, val and test
LABEL_SEPARATOR = "|"
_COPY_ROWS = 256  # rows copied per step from the staging array, so memory stays bounded

# Kinds of skipped files, as the summary line counts them.
UNREADABLE, UNLABELLED, BAD_LABELS = "unreadable", "unlabelled", "bad_labels"
LINK_OUT, BAD_NAME = "link_outside_raw", "bad_name"

# Python reads the bytes of a name that is not UTF-8 as surrogates (U+DC80-U+DCFF). DVC cannot hash
# such a name, so .dvcignore hides it with this same range (its ends are the nearest characters a UTF-8
# .dvcignore can spell); prepare skips it too, so that DVC and the prepared data agree.
_NOT_UTF8 = re.compile("[\ud7ff-\ue000]")


@dataclass(frozen=True)
class LabelEntry:
    """One usable line of the labels file."""

    line: int
    labels: tuple[str, ...]
    where: str  # "labels.csv line 12", for reasons


@dataclass
class Inventory:
    """What the raw folder offers: the files to decode with their labels, and what was set aside."""

    classes: list[str]
    paths: list[str]  # relative to raw, POSIX, sorted
    labels: list[tuple[str, ...]]  # in class order, parallel to paths
    skipped: list[dict] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)


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
        "seconds": round(seconds, 2),
        "images_per_second": round(len(inventory.paths) / max(seconds, 1e-9), 1),
        "manifest": str(prepared / MANIFEST),
    }


def prepare_into(out: Path, raw: Path, inventory: Inventory, cfg: Config) -> dict:
    """Decode, deduplicate, split and write everything into the (empty) folder out; return the manifest."""
    staging = out / "_decoded.npy"
    digests, reasons = decode_all(raw, inventory.paths, staging, cfg.data)
    kept, duplicates, merged = deduplicate(inventory, digests, reasons)
    unreadable = [_skip(path, why, UNREADABLE) for path, why in zip(inventory.paths, reasons) if why is not None]
    empty = check_class_sizes(kept, inventory, unreadable, raw)
    splits = assign_splits(kept.labels, cfg.data, cfg.seed)
    write_arrays(out, staging, kept, splits, inventory.classes)
    staging.unlink()
    warnings = {"empty_classes": empty, "merged_duplicate_labels": merged}
    skipped = inventory.skipped + unreadable
    manifest = build_manifest(cfg, inventory.classes, kept, splits, skipped, duplicates, warnings)
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (out / MANIFEST).write_text(text, encoding="utf-8")  # names that are not UTF-8 never get this far
    return manifest


def main() -> None:
    """DVC stage entry point: `python -m op_classifier.stages.prepare` with params.yaml."""
    from op_classifier.runner import stage_main

    stage_main(run)


# --- what the raw folder holds ---------------------------------------------------------------------


def scan(raw: Path, data: DataConfig) -> Inventory:
    """List the raw images, give each its labels, and set aside those without usable labels."""
    if not raw.is_dir():
        raise DataError(f"paths.raw: {raw} is not a folder")
    labels_path = raw / data.labels_file if data.labels_file else None
    if labels_path is not None and not _inside(labels_path, raw):
        raise DataError(f"{labels_path}: links outside paths.raw ({raw}); copy the file there instead")
    files, aside = list_raw(raw, exclude=labels_path)
    if not files:
        example = f" (set aside: {aside[0]['path']}: {aside[0]['reason']})" if aside else ""
        raise DataError(f"paths.raw: {raw} holds no image files{example}")
    # Set-aside names count as known: a labels line naming one is fine, the file is reported once.
    entries, skipped = read_labels_file(labels_path, set(files) | {entry["path"] for entry in aside})
    classes = list(data.classes) if data.classes is not None else infer_classes(files, entries)
    inventory = Inventory(classes=classes, paths=[], labels=[], skipped=aside + skipped)
    used = {_folder_of(path) for path in files} | {entry["path"] for entry in aside}
    inventory.empty_folders = [folder.name for folder in _top_folders(raw) if folder.name not in used]
    for path in files:
        labels, skip = _labels_of(path, entries, classes)
        if skip is not None:
            inventory.skipped.append(skip)
        else:
            inventory.paths.append(path)
            inventory.labels.append(labels)
    return inventory


def list_files(raw: Path, exclude: Path | None = None) -> list[str]:
    """Every non-hidden file under raw, as sorted POSIX paths relative to it."""
    found = []
    for folder, subfolders, names in os.walk(raw):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if not name.startswith(".") and path != exclude:
                found.append(path.relative_to(raw).as_posix())
    return sorted(found)


def list_raw(raw: Path, exclude: Path | None = None) -> tuple[list[str], list[dict]]:
    """The non-hidden files under raw (sorted POSIX paths relative to it) and the entries set aside.

    Links are followed while they stay inside raw; one leading out of it, or a folder link back up
    (a loop), is set aside unread, as is a name that is not UTF-8.
    """
    found, aside = [], []
    loops = {raw: (Path(os.path.realpath(raw)),)}  # each walked folder's real path and its parents'
    for folder, subfolders, names in os.walk(raw, followlinks=True):
        folder = Path(folder)
        above = loops.pop(folder)
        subfolders[:] = [name for name in subfolders if _walkable(folder / name, raw, above, loops, aside)]
        for name in names:
            path = folder / name
            if not name.startswith(".") and path != exclude and _usable(path, raw, aside):
                found.append(path.relative_to(raw).as_posix())
    return sorted(found), aside


def _walkable(path: Path, raw: Path, above: tuple[Path, ...], loops: dict, aside: list[dict]) -> bool:
    if path.name.startswith(".") or not _usable(path, raw, aside):
        return False
    real = Path(os.path.realpath(path))
    if real in above:
        aside.append(_skip(_shown(path, raw), "link to a folder that holds it (a loop); not followed", LINK_OUT))
        return False
    loops[path] = (*above, real)
    return True


def _usable(path: Path, raw: Path, aside: list[dict]) -> bool:
    """Whether a file or folder may be read; if not, note why in aside."""
    shown = _shown(path, raw)
    if _NOT_UTF8.search(path.name):
        aside.append(_skip(shown, "name is not valid UTF-8, which DVC cannot track; rename it", BAD_NAME))
        return False
    if not _inside(path, raw):
        target = os.fsencode(os.path.realpath(path)).decode("utf-8", "backslashreplace")
        aside.append(_skip(shown, f"link points outside paths.raw (to {target}); not read", LINK_OUT))
        return False
    return True


def _inside(path: Path, raw: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(raw))


def _shown(path: Path, raw: Path) -> str:
    # Bytes that are not UTF-8 as \xff escapes: printable, and valid in the UTF-8 manifest.
    return os.fsencode(path.relative_to(raw).as_posix()).decode("utf-8", "backslashreplace")


def read_labels_file(path: Path | None, files: set[str]) -> tuple[dict[str, LabelEntry], list[dict]]:
    """Parse the labels CSV: usable entries by path, and the lines skipped with their reasons."""
    if path is None or not path.is_file():
        return {}, []
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({error})") from None
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if header != ["path", "labels"]:
        raise DataError(f"{path}: the first line must be the header `path,labels`, got {','.join(header)!r}")
    entries: dict[str, LabelEntry] = {}
    skipped = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        entry, problem = _parse_labels_row(row, f"{path.name} line {line}", line, files, entries)
        if problem is not None:
            skipped.append(problem)
        else:
            entries[_clean_path(row[0])] = entry
    return entries, skipped


def _parse_labels_row(
    row: list[str], where: str, line: int, files: set[str], entries: dict[str, LabelEntry]
) -> tuple[LabelEntry | None, dict | None]:
    if len(row) != 2:
        return None, _skip(None, f"{where}: expected 2 fields `path,labels`, got {len(row)}", BAD_LABELS, line)
    path = _clean_path(row[0])
    labels = tuple(dict.fromkeys(label.strip() for label in row[1].split(LABEL_SEPARATOR) if label.strip()))
    if not path or not labels:
        return None, _skip(path or None, f"{where}: empty path or labels", BAD_LABELS, line)
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        return None, _skip(path, f"{where}: path must be relative to paths.raw", BAD_LABELS, line)
    if path not in files:
        return None, _skip(path, f"{where}: no such file", BAD_LABELS, line)
    if path in entries:
        return None, _skip(path, f"{where}: already listed on line {entries[path].line}", BAD_LABELS, line)
    return LabelEntry(line, labels, where), None


def _clean_path(text: str) -> str:
    text = text.strip()
    return PurePosixPath(text).as_posix() if text else ""


def infer_classes(files: Sequence[str], entries: dict[str, LabelEntry]) -> list[str]:
    """With data.classes null: every label in the labels file, plus each folder holding an unlisted file."""
    names = {label for entry in entries.values() for label in entry.labels}
    names |= {_folder_of(path) for path in files if path not in entries and _folder_of(path)}
    if len(names) < 2:
        raise DataError(f"found {len(names)} class(es) {sorted(names)} in paths.raw; need at least two")
    return sorted(names)


def _labels_of(path: str, entries: dict[str, LabelEntry], classes: list[str]) -> tuple[tuple[str, ...], dict | None]:
    entry = entries.get(path)
    if entry is not None:
        unknown = [label for label in entry.labels if label not in classes]
        if unknown:
            reason = f"{entry.where}: unknown class {unknown[0]!r} (classes: {', '.join(classes)})"
            return (), _skip(path, reason, BAD_LABELS, entry.line)
        return _in_class_order(entry.labels, classes), None
    folder = _folder_of(path)
    if folder in classes:
        return (folder,), None
    where = f"folder {folder!r} is not a class" if folder else "not in a class folder"
    return (), _skip(path, f"{where} and not listed in the labels file", UNLABELLED)


def _folder_of(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    return parts[0] if len(parts) > 1 else None


def _top_folders(raw: Path) -> list[Path]:
    # A name that is not UTF-8 is reported as skipped (escaped); as an empty class it would break the manifest.
    folders = (p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(p for p in folders if not _NOT_UTF8.search(p.name))


def _in_class_order(labels: Sequence[str], classes: list[str]) -> tuple[str, ...]:
    return tuple(name for name in classes if name in labels)


def _skip(path: str | None, reason: str, kind: str, line: int | None = None) -> dict:
    entry = {"path": path, "reason": reason, "kind": kind}
    if line is not None:
        entry["line"] = line
    return entry


# --- decoding ----------------------------------------------------------------------------------------


def decode_all(
    raw: Path, paths: Sequence[str], staging: Path, data: DataConfig
) -> tuple[list[str | None], list[str | None]]:
    """Decode every file over all cores into the staging array; return per-file sha256 and skip reason."""
    size = data.image_size
    arrays.create(staging, (len(paths), size, size, 3))  # the workers write their rows into it
    digests: list[str | None] = [None] * len(paths)
    reasons: list[str | None] = [None] * len(paths)
    if not paths:
        return digests, reasons
    job = partial(_decode_file, size=size, max_pixels=data.max_image_pixels)
    workers = min(cpu_count(), len(paths))
    chunksize = max(1, min(32, len(paths) // (workers * 8)))
    jobs = ((index, str(raw / path)) for index, path in enumerate(paths))
    pool = multiprocessing.Pool(workers, initializer=_start_worker, initargs=(str(staging),))
    with pool, _progress(len(paths)) as bar:
        for index, digest, reason in pool.imap_unordered(job, jobs, chunksize=chunksize):
            digests[index], reasons[index] = digest, reason
            bar.update()
    return digests, reasons


# Each worker's handle on the staging array: writing rows there spares pickling every image to the parent.
_staging: arrays.RowFile | None = None


def _start_worker(staging: str) -> None:
    global _staging
    # Ctrl-C is the parent's to handle; workers printing a traceback each would bury its message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _staging = arrays.RowFile(Path(staging), writable=True)


def _decode_file(job: tuple[int, str], size: int, max_pixels: int) -> tuple[int, str | None, str | None]:
    """Worker: decode (index, path) into row index of the staging array; return (index, sha256, skip reason)."""
    index, path = job
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return index, None, f"cannot read file: {error.strerror or error}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        _staging.write(index, decode_image(data, size, max_pixels)[None])
    except ImageError as error:
        return index, digest, str(error)
    return index, digest, None


def cpu_count() -> int:
    """Cores this process may use (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
        kept.labels[position] = _in_class_order(labels, inventory.classes)
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


# --- the split -------------------------------------------------------------------------------------------


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
    if manifest["warnings"]["empty_classes"]:
        text += f"; empty: {', '.join(manifest['warnings']['empty_classes'])}"
    return f"{text}: see {manifest_path}"


@contextmanager
def staged_output(target: Path) -> Iterator[Path]:
    """Yield a new folder beside target; it replaces target only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    staging = _sibling(target, "tmp")
    try:
        yield staging
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sibling(target: Path, kind: str) -> Path:
    # mkdir rather than tempfile.mkdtemp: mkdtemp's 0700 would make the output private to its author.
    folder = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    return folder


def _remove_abandoned(target: Path) -> None:
    # A killed run (SIGKILL, power loss) cannot clean up after itself; its staging copy can be gigabytes.
    for folder in target.parent.glob(f".{target.name}.*-*-*"):
        kind, _, rest = folder.name[len(target.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is someone else's
        return True
    return True


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = _sibling(target, "old")
    target.rename(old / target.name)
    try:
        new.rename(target)
    except OSError:
        (old / target.name).rename(target)  # put the previous output back
        raise
    finally:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    main()
