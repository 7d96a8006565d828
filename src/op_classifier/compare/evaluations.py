"""`op-classifier compare A B`: two evaluated models, paired on the same images (paired.py).

A and B each name an evaluation: `workspace` (this folder's last `dvc repro`), a DVC experiment (its
name or revision), an MLflow run id (training or evaluate), a registered version (`v3`, models:/...)
or an alias (`champion`, `@name`). The table goes to stdout (or JSON) and, as a file, to the MLflow
evaluate run of the newer of the two.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from op_classifier import tracking
from op_classifier.compare import paired
from op_classifier.config import Config
from op_classifier.data.prepared import RUN_FILE
from op_classifier.errors import DataError, OpClassifierError
from op_classifier.tracking import Evaluated

WORKSPACE = "workspace"


class CompareError(OpClassifierError):
    """A comparison that cannot be made: an unknown or unevaluated model, or other images."""

    exit_code = 2


RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def run(cfg: Config, a: str, b: str, split: str, as_json: bool = False) -> str:
    """Compare B against A on split; the text (or JSON) to print."""
    if a == b:
        raise CompareError(f"compare: A and B are both {a!r}; name two evaluations")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            first, second = (_resolve(cfg, ref, Path(tmp) / side) for ref, side in ((a, "a"), (b, "b")))
            result = paired.compare(
                paired.read_predictions(first.path, a),
                paired.read_predictions(second.path, b),
                split,
                alpha=cfg.tracking.alpha,
                seed=cfg.seed,
            )
        except OpClassifierError as error:
            raise CompareError(str(error)) from None
        result = {"a": {"ref": a, "label": first.label}, "b": {"ref": b, "label": second.label}, **result}
        text = json.dumps(result, indent=2) if as_json else paired.table(result, first.label, second.label)
        newer = max((first, second), key=lambda side: side.started if side.run_id else -1)
        if newer.run_id and cfg.tracking.kind != "none":
            out = Path(tmp) / f"compare-{split}-{_safe(a)}-vs-{_safe(b)}.txt"
            out.write_text(paired.table(result, first.label, second.label) + "\n", encoding="utf-8")
            out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
            store = tracking.open_store(cfg.tracking)
            for path in (out, out.with_suffix(".json")):
                store.attach(newer.run_id, path, "comparisons")
            text += f"\n(kept with the MLflow run {newer.run_id}, under comparisons/)" if not as_json else ""
    return text


def _resolve(cfg: Config, ref: str, dst: Path) -> Evaluated:
    """The kept predictions `ref` names (see the module's docstring)."""
    if ref == WORKSPACE:
        return _from_files(
            cfg, "workspace", Path(cfg.paths.predictions), _read_local(Path(cfg.paths.model) / RUN_FILE), dst
        )
    if RUN_ID.match(ref) or ref.startswith(("models:/", "@")) or ref == "champion" or re.fullmatch(r"v\d+", ref):
        return tracking.open_store(cfg.tracking).evaluation(ref, cfg.tracking.model_name, dst)
    return _from_dvc(cfg, ref, dst)


def _from_dvc(cfg: Config, rev: str, dst: Path) -> Evaluated:
    """A DVC experiment's (or any git revision's) predictions, as `dvc exp show` knows it."""
    import dvc.api

    try:
        text = dvc.api.read(cfg.paths.predictions, rev=rev)
    except Exception as error:  # DVC raises many types for an unknown revision or a missing file
        raise OpClassifierError(
            f"{rev}: not a run id, version (v3), alias (champion, @name) or DVC experiment with "
            f"{cfg.paths.predictions} ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    record = None
    try:
        record = json.loads(dvc.api.read(str(Path(cfg.paths.model) / RUN_FILE), rev=rev))
    except Exception:  # no model record in that revision: no MLflow run to keep the table with
        record = None
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "predictions.csv").write_text(text, encoding="utf-8")
    return _from_files(cfg, rev, dst / "predictions.csv", record, dst)


def _from_files(cfg: Config, label: str, predictions: Path, record: dict[str, Any] | None, dst: Path) -> Evaluated:
    if not predictions.is_file():
        raise DataError(f"{predictions} not found: run the evaluate stage first (`dvc repro`)")
    training = (record or {}).get("run_id")
    if training and cfg.tracking.kind != "none":
        found = tracking.open_store(cfg.tracking).training_evaluation(training, label, dst / "mlflow")
        if found is not None:
            return Evaluated(label, predictions, found.run_id, found.started)
    return Evaluated(label, predictions, None, 0)


def _read_local(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _safe(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", ref)[:40]
