"""`op-classifier audit --suggest FOLDER`: the last audit's findings as drafts of the two correction files,
for the user to edit and copy into paths.raw (no command changes anything there):

- FOLDER/labels.csv (`path,labels,reason`): each label issue relabelled to the class Datalab suggests,
  rows for data.labels_file, which gives an image its labels instead of its folder's name;
- FOLDER/exclude.csv (`path,reason`): each outlier left out, rows for data.exclude_file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from op_classifier.config import Config
from op_classifier.data.raw import RawDataError

NEEDED = ("path", "kind", "score", "given", "suggested")  # of issues.csv's columns


def suggest(cfg: Config, folder: Path) -> dict[str, Any]:
    """Write the drafts into folder (never into paths.raw, never over a file); what was written."""
    issues = Path(cfg.paths.audit_issues)
    raw = Path(cfg.paths.raw).resolve()
    target = folder.resolve()
    if target == raw or raw in target.parents:
        raise RawDataError(
            f"--suggest {folder}: write the drafts outside {cfg.paths.raw}, review them, then copy the rows you accept"
        )
    drafts = {name: folder / f"{name}.csv" for name in ("labels", "exclude")}
    for draft in drafts.values():
        if draft.exists():
            raise RawDataError(f"--suggest {folder}: {draft} exists; name another folder (nothing is overwritten)")
    rows = _read(issues)
    relabel = [(r["path"], r["suggested"], _why(r)) for r in rows if r["kind"] == "label" and r["suggested"]]
    exclude = [(r["path"], _why(r)) for r in rows if r["kind"] == "outlier"]
    folder.mkdir(parents=True, exist_ok=True)
    _write(drafts["labels"], ("path", "labels", "reason"), relabel)
    _write(drafts["exclude"], ("path", "reason"), exclude)
    labels_file, exclude_file = cfg.data.labels_file or "labels.csv", cfg.data.exclude_file or "exclude.csv"
    return {
        "relabel": len(relabel),
        "exclude": len(exclude),
        **{name: str(path) for name, path in drafts.items()},
        "next": f"edit the drafts, copy the rows you accept into {cfg.paths.raw}/{labels_file} and "
        f"{cfg.paths.raw}/{exclude_file}, then `dvc add {cfg.paths.raw}` and `dvc repro`",
    }


def _read(issues: Path) -> list[dict[str, str]]:
    if not issues.is_file():
        raise RawDataError(f"{issues} not found: run the audit first (`dvc repro audit` or `op-classifier audit`)")
    with issues.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not set(NEEDED) <= set(rows[0]):
        raise RawDataError(f"{issues}: not the audit's issues.csv (its columns must include {', '.join(NEEDED)})")
    return rows


def _why(row: dict[str, str]) -> str:
    given = f", given {row['given']}" if row.get("given") else ""
    return f"audit: {row['kind']} (score {float(row['score']):.3f}{given})"


def _write(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    with path.open("x", newline="", encoding="utf-8") as handle:  # "x": never over a file written meanwhile
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
