"""State a stage keeps between runs (a tuner search, training checkpoints), tied to what made it.

A folder of state carries a fingerprint of the params its stage declares, the prepared data and the
package's code. It is resumed only when the fingerprint matches; otherwise it is wiped and the stage
starts fresh, saying why, so a changed config never silently reuses an old search or checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FINGERPRINT_FILE = "fingerprint.json"


def code_hash(module: str | None = None, source: Path | None = None) -> str:
    """Hash of the source files `python -m <module>` can run (all of the package's without one): an
    edit to code the stage never runs keeps its state."""
    from op_classifier.training import sources

    root = source or sources.SOURCE
    files = sources.closure(module, root) if module else (root / sources.PACKAGE).rglob("*.py")
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def starting_weights_hash(model: Any) -> str | None:
    """sha256 of the file a model's starting weights come from: a new file at the same path is new state."""
    from op_classifier.weights.imagenet import file_hash

    source = model.weights_file()
    return file_hash(source) if source is not None else None


def select(tree: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The given dotted keys (`seed`, `data.image_size`, `model`) of a nested config, flattened."""
    picked: dict[str, Any] = {}
    for key in keys:
        value: Any = tree
        for part in key.split("."):
            value = value[part]
        picked.update(flat(value, key))
    return picked


def fingerprint(
    params: Mapping[str, Any], data_hash: str, stage: str | None = None, model: Any = None, **extra: Any
) -> dict[str, Any]:
    """What a stage's state depends on: its params, the data, the code it runs (`stage`, its module), the
    content of the file its `model` section's starting weights come from, and any extra inputs."""
    weights = starting_weights_hash(model) if model is not None else None
    record = {"params": dict(params), "data": data_hash, "code": code_hash(stage), **extra}
    record |= {"weights": weights} if weights else {}
    text = json.dumps(record, sort_keys=True, default=str)
    return {"id": hashlib.sha256(text.encode()).hexdigest()[:16], **json.loads(text)}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human names of what changed between two fingerprints: param keys, `data`, `code`, ..."""
    changed = [
        key
        for key in sorted(set(old.get("params", {})) | set(new.get("params", {})))
        if old.get("params", {}).get(key) != new.get("params", {}).get(key)
    ]
    others = sorted((set(old) | set(new)) - {"params", "id", "complete"})
    changed += [key for key in others if old.get(key) != new.get(key)]
    return changed


def claim(folder: Path, new: Mapping[str, Any], what: str, keep: Iterable[str] = (), why: str | None = None) -> bool:
    """Make folder hold state of `new`; True if its existing state matches and may be resumed.

    Otherwise (or when the caller gives `why` it must not be resumed) the folder is emptied (except the
    `keep` files, e.g. the id of a tracking run that the tracker closes itself) and the reason printed. A
    finished state is never resumed: it starts anew.
    """
    recorded = read(folder)
    if why is None and recorded is not None and recorded.get("id") == new["id"] and not recorded.get("complete"):
        return True
    if _has_state(folder, keep):
        why = why or _why_not_resumed(recorded, new)
        print(f"note: not resuming the {what} in {folder}: {why}; starting fresh", file=sys.stderr, flush=True)
        _empty(folder, keep)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FINGERPRINT_FILE).write_text(json.dumps(dict(new), indent=2, sort_keys=True), encoding="utf-8")
    return False


def _why_not_resumed(recorded: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    if recorded is None:
        return "it carries no fingerprint"
    if recorded.get("id") == new["id"]:
        return "it finished"
    changed = differences(recorded, new)
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""  # the line stays short; all are in the file
    return f"{', '.join(changed[:3]) or 'its inputs'}{more} changed"


def finished(folder: Path, new: Mapping[str, Any]) -> bool:
    """True if folder holds finished work of exactly `new` (the same fingerprint): its result stands."""
    recorded = read(folder)
    return recorded is not None and recorded.get("id") == new["id"] and bool(recorded.get("complete"))


def mark_complete(folder: Path) -> None:
    """Record that the state's work finished: never resumed; its result may stand (`finished`)."""
    recorded = read(folder)
    if recorded is not None:
        (folder / FINGERPRINT_FILE).write_text(
            json.dumps({**recorded, "complete": True}, indent=2, sort_keys=True), encoding="utf-8"
        )


def reopen(folder: Path, new: Mapping[str, Any]) -> None:
    """Mark finished work unfinished under `new` (the same id): the next `claim` resumes it."""
    (folder / FINGERPRINT_FILE).write_text(json.dumps(dict(new), indent=2, sort_keys=True), encoding="utf-8")


def read(folder: Path) -> dict[str, Any] | None:
    """The fingerprint recorded in folder, or None (no folder, no file, unreadable)."""
    try:
        return json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _has_state(folder: Path, keep: Iterable[str]) -> bool:
    kept = set(keep) | {FINGERPRINT_FILE}
    return folder.is_dir() and any(child.name not in kept for child in folder.iterdir())


def _empty(folder: Path, keep: Iterable[str]) -> None:
    kept = set(keep)
    for child in folder.iterdir():
        if child.name in kept:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"a.b.c": value}; under `prefix` when given (values are kept as they are)."""
    if isinstance(tree, dict):
        return {
            k: v for name, item in tree.items() for k, v in flat(item, f"{prefix}.{name}" if prefix else name).items()
        }
    return {prefix: tree}
