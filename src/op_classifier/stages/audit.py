"""Stage `audit`: look into the prepared data before trusting it. cleanlab's Datalab over the installed
backbone's ImageNet features of every prepared image (audit.backbone, whatever model= trains) and the
out-of-sample probabilities of K-fold heads on them: label issues, outliers, near-duplicates (and whether
they cross splits), class imbalance. Writes issues.csv, summary.json (a DVC metric) and a gallery; an
MLflow run `audit` carries the counts and the gallery. It runs beside tune and blocks no training."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from op_classifier.audit.findings import KINDS, Audit, Finding, audit, check_auditable, summary
from op_classifier.audit.findings import Image as Audited
from op_classifier.audit.page import write_page
from op_classifier.config import Config, ConfigError, project_conf, validate_model
from op_classifier.data.arrays import RowFile
from op_classifier.data.prepared import load_manifest
from op_classifier.data.splits import SPLITS
from op_classifier.models import get as architecture
from op_classifier.runner import stage_main
from op_classifier.runner import written as files_written
from op_classifier.tracking import flatten, make_tracker
from op_classifier.training import features, hparams

COLUMNS = tuple(field.name for field in fields(Finding))  # path, split, kind, score, given, suggested, note


def run(cfg: Config) -> dict:
    """Audit the prepared data; write the findings, their summary and gallery; log them to MLflow."""
    started = time.perf_counter()
    prepared = Path(cfg.paths.prepared)
    manifest = load_manifest(prepared, cfg.data.image_size)
    entries = [entry for split in SPLITS for entry in _in_rows(manifest, split)]
    images = [Audited(entry["path"], entry["split"], tuple(entry["labels"])) for entry in entries]
    why = check_auditable(images, cfg.audit.folds)
    if why:  # the audit blocks no training: it says, in one line and in its summary, why it found nothing
        print(f"note: nothing audited: {why}", file=sys.stderr)
        found = Audit([], 0, len(images), float("nan"))
    else:
        found = audit(images, _features(cfg, prepared, len(manifest["classes"])), cfg.audit.folds, cfg.seed)
    counts = {**summary(found, manifest["classes"]), **({"skipped": why} if why else {})}
    written = _write(cfg, found, counts, prepared, {(e["split"], e["path"]): e["index"] for e in entries})
    tracker = make_tracker(cfg.tracking)
    with tracker.run("audit", tags={"stage": "audit"}, params=flatten({"audit": vars(cfg.audit)})):
        tracker.log_metrics({f"audit.{k}": v for k, v in flatten(counts).items() if isinstance(v, (int, float))})
        for path in written:
            tracker.log_artifact(path, "audit")
    shown = {key: value for key, value in counts.items() if key != "per_class"}
    found_kinds = ", ".join(f"{counts[kind]} {kind.replace('_', ' ')}" for kind in KINDS if counts[kind])
    did = f"nothing audited ({why})" if why else f"{counts['audited']} images: {found_kinds or 'no issue found'}"
    return {
        "did": did,
        "wrote": files_written(*written),
        **shown,
        **{p.suffix[1:]: str(p) for p in written},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _in_rows(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """One split's manifest entries in the order of its arrays' rows."""
    return sorted((entry for entry in manifest["files"] if entry["split"] == split), key=lambda e: e["index"])


def _features(cfg: Config, prepared: Path, classes: int) -> np.ndarray:
    """Every prepared image's pooled features through audit.backbone (the feature cache's, shared with
    tune and train where they use the same backbone at the same size), in split and row order."""
    file = project_conf() / "model" / f"{cfg.audit.backbone}.yaml"
    try:
        section = (yaml.safe_load(file.read_text(encoding="utf-8")) or {})["model"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise ConfigError(f"audit.backbone: no model section in {file} (a conf/model file's name)") from None
    model_cfg = validate_model(section)
    if getattr(model_cfg, "weights", None) is None:
        raise ConfigError(f"audit.backbone: {cfg.audit.backbone} has no pretrained weights: its features mean nothing")
    model = architecture(model_cfg.name).build(
        classes, cfg.data.image_size, seed=cfg.seed, **hparams.model_args(model_cfg)
    )
    found = features.of_splits(model, prepared, cfg.audit.batch_size, SPLITS)
    return np.concatenate([found[split].x for split in SPLITS])


def _write(cfg: Config, found: Audit, counts: dict[str, Any], prepared: Path, rows: dict) -> list[Path]:
    """issues.csv, summary.json and the gallery, each where paths.audit_* says."""
    issues, totals, gallery = (
        Path(p) for p in (cfg.paths.audit_issues, cfg.paths.audit_summary, cfg.paths.audit_gallery)
    )
    issues.parent.mkdir(parents=True, exist_ok=True)
    with issues.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(astuple(finding) for finding in found.findings)
    totals.parent.mkdir(parents=True, exist_ok=True)
    totals.write_text(json.dumps(counts, indent=2), encoding="utf-8")
    arrays = {split: RowFile(prepared / split / "images.npy") for split in SPLITS}

    def thumbnail(finding: Finding) -> Image.Image:
        return Image.fromarray(arrays[finding.split].read([rows[(finding.split, finding.path)]])[0])

    said = f"{counts['audited']} single-label images audited, {counts['left_out_multi_label']} multi-label left out"
    write_page(gallery, found.findings, thumbnail, cfg.audit.shown, counts.get("skipped") or said)
    return [issues, totals, gallery]


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.audit`."""
    stage_main(run)


if __name__ == "__main__":
    main()
