"""Reading paths.raw: which files are images of which classes, and what is set aside and why.

Raw data contract (paths.raw):
- `<ClassName>/...`: every file anywhere below a top-level class folder (nested folders included)
  is an image of that class. Hidden files and folders (name starting with ".") are ignored.
- Nothing outside paths.raw is read: links (to files or folders) are followed only while they stay
  inside it. Links out, folder links that loop, and names that are not UTF-8 are skipped unread and
  listed in manifest.json with their reason.
- `<data.labels_file>` (optional CSV, header `path,labels[,reason]`, labels joined by `|`, path relative to
  paths.raw): an entry replaces the folder label, e.g. `scenes/0001.jpg,Luffy|Zoro`. Files outside
  a class folder (e.g. `scenes/`) must be listed there; unlisted ones are skipped and reported.
- `<data.exclude_file>` (optional CSV, header `path,reason`): images left out, each with why (a correction
  drafted by `op-classifier audit --suggest`), after the split; every line must name a file here, or
  prepare stops.
- `data.classes` fixes the classes and their order; null infers the sorted union of all labels.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from op_classifier.config import DataConfig
from op_classifier.errors import DataError


class RawDataError(DataError):
    """A raw folder, or a file a user wrote about it (the exclusion list), that cannot be used as it is."""

    exit_code = 2


LABEL_SEPARATOR = "|"

# Kinds of skipped files, as the summary line counts them.
UNREADABLE, UNLABELLED, BAD_LABELS, EXCLUDED = "unreadable", "unlabelled", "bad_labels", "excluded"

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
    # The exclusion list's images and why: split with the rest, then left out, so that excluding an
    # image moves no other image to another split (runs before and after pair on the same val and test).
    excluded: dict[str, str] = field(default_factory=dict)


def scan(raw: Path, data: DataConfig) -> Inventory:
    """List the raw images, give each its labels, and set aside those without usable labels."""
    if not raw.is_dir():
        raise DataError(f"paths.raw: {raw} is not a folder")
    labels_path, exclude_path = (raw / name if name else None for name in (data.labels_file, data.exclude_file))
    for listed in (labels_path, exclude_path):
        if listed is not None and not _inside(listed, raw):
            raise DataError(f"{listed}: links outside paths.raw ({raw}); copy the file there instead")
    files, aside = list_raw(raw, exclude=(labels_path, exclude_path))
    if not files:
        example = f" (set aside: {aside[0]['path']}: {aside[0]['reason']})" if aside else ""
        raise DataError(f"paths.raw: {raw} holds no image files{example}")
    # Set-aside names count as known: a labels line naming one is fine, the file is reported once.
    entries, skipped = read_labels_file(labels_path, set(files) | {entry["path"] for entry in aside})
    excluded = read_exclusions(exclude_path, set(files) | {entry["path"] for entry in aside})
    classes = list(data.classes) if data.classes is not None else infer_classes(files, entries)
    inventory = Inventory(classes=classes, paths=[], labels=[], skipped=aside + skipped, excluded=excluded)
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


def list_raw(raw: Path, exclude: Sequence[Path | None] = ()) -> tuple[list[str], list[dict]]:
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
            if not name.startswith(".") and path not in exclude and _usable(path, raw, aside):
                found.append(path.relative_to(raw).as_posix())
    return sorted(found), aside


def check_links(folder: Path) -> dict[str, int | str]:
    """`op-classifier check-raw`: refuse a raw folder whose links lead outside it (each named on stderr),
    before `dvc add` copies what they point to into the tracked data; what it holds otherwise."""
    if not folder.is_dir():
        raise RawDataError(f"{folder} is not a folder")
    files, aside = list_raw(folder)
    outside = [entry for entry in aside if entry["kind"] == LINK_OUT]
    for entry in outside:
        print(f"{entry['path']}: {entry['reason']}", file=sys.stderr)
    if outside:
        raise RawDataError(
            f"{folder}: {len(outside)} link(s) lead outside it: `dvc add` would copy what they point to into "
            "the tracked data (.dvc/cache); replace them with the files, or remove them"
        )
    return {"folder": str(folder), "files": len(files), "set_aside": len(aside)}


def _walkable(path: Path, raw: Path, above: tuple[Path, ...], loops: dict, aside: list[dict]) -> bool:
    if path.name.startswith(".") or not _usable(path, raw, aside):
        return False
    real = Path(os.path.realpath(path))
    if real in above:
        aside.append(skip_record(_shown(path, raw), "link to a folder that holds it (a loop); not followed", LINK_OUT))
        return False
    loops[path] = (*above, real)
    return True


def _usable(path: Path, raw: Path, aside: list[dict]) -> bool:
    """Whether a file or folder may be read; if not, note why in aside."""
    shown = _shown(path, raw)
    if _NOT_UTF8.search(path.name):
        aside.append(skip_record(shown, "name is not valid UTF-8, which DVC cannot track; rename it", BAD_NAME))
        return False
    if not _inside(path, raw):
        target = os.fsencode(os.path.realpath(path)).decode("utf-8", "backslashreplace")
        aside.append(skip_record(shown, f"link points outside paths.raw (to {target}); not read", LINK_OUT))
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
    if header not in (["path", "labels"], ["path", "labels", "reason"]):  # a reason: a correction says why
        raise DataError(f"{path}: the first line must be the header `path,labels[,reason]`, got {','.join(header)!r}")
    entries: dict[str, LabelEntry] = {}
    skipped = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) == len(header) == 3:
            row = row[:2]
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
        return None, skip_record(None, f"{where}: expected 2 fields `path,labels`, got {len(row)}", BAD_LABELS, line)
    path = _clean_path(row[0])
    labels = tuple(dict.fromkeys(label.strip() for label in row[1].split(LABEL_SEPARATOR) if label.strip()))
    if not path or not labels:
        return None, skip_record(path or None, f"{where}: empty path or labels", BAD_LABELS, line)
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        return None, skip_record(path, f"{where}: path must be relative to paths.raw", BAD_LABELS, line)
    if path not in files:
        return None, skip_record(path, f"{where}: no such file", BAD_LABELS, line)
    if path in entries:
        return None, skip_record(path, f"{where}: already listed on line {entries[path].line}", BAD_LABELS, line)
    return LabelEntry(line, labels, where), None


def read_exclusions(path: Path | None, files: set[str]) -> dict[str, str]:
    """The exclusion list as {image: why}; a line that cannot be applied stops prepare in one line (exit 2):
    a correction the user wrote must not be dropped in silence."""
    if path is None or not path.is_file():
        return {}
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as error:
        raise RawDataError(f"{path}: cannot be read as a UTF-8 CSV ({error})") from None
    if not rows or [cell.strip().lower() for cell in rows[0]] != ["path", "reason"]:
        raise RawDataError(f"{path}: the first line must be the header `path,reason`")
    excluded: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} line {line}"
        image = _clean_path(row[0]) if len(row) == 2 else ""
        if len(row) != 2 or not image or not row[1].strip():
            raise RawDataError(f"{where}: expected `path,reason`, both given, got {','.join(row)!r}")
        if image not in files:
            raise RawDataError(f"{where}: no file {image} in paths.raw")
        if image in excluded:
            raise RawDataError(f"{where}: {image} is listed twice")
        excluded[image] = f"excluded by {where}: {row[1].strip()}"
    return excluded


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
            return (), skip_record(path, reason, BAD_LABELS, entry.line)
        return in_class_order(entry.labels, classes), None
    folder = _folder_of(path)
    if folder in classes:
        return (folder,), None
    where = f"folder {folder!r} is not a class" if folder else "not in a class folder"
    return (), skip_record(path, f"{where} and not listed in the labels file", UNLABELLED)


def _folder_of(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    return parts[0] if len(parts) > 1 else None


def _top_folders(raw: Path) -> list[Path]:
    # A name that is not UTF-8 is reported as skipped (escaped); as an empty class it would break the manifest.
    folders = (p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(p for p in folders if not _NOT_UTF8.search(p.name))


def in_class_order(labels: Sequence[str], classes: list[str]) -> tuple[str, ...]:
    """labels as a tuple in the order of classes (the order of manifest.json and of the model's outputs)."""
    return tuple(name for name in classes if name in labels)


def skip_record(path: str | None, reason: str, kind: str, line: int | None = None) -> dict:
    """One entry of manifest.json's `skipped`: the file, why, and the kind the summary counts."""
    entry = {"path": path, "reason": reason, "kind": kind}
    if line is not None:
        entry["line"] = line
    return entry
