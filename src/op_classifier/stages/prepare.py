"""The prepare stage: raw image folders -> deduplicated, stratified, memory-mappable train/val/test arrays.

The story, top to bottom: read the raw folder (data/raw.py: what counts as an image of which class, and
what is set aside), decode every file over all cores (data/decode.py), drop exact duplicates and refuse
classes too small to split (data/kept.py), group near-duplicates (data/near_duplicates.py), split
(data/splits.py: each group whole in one split), leave out the exclusion list's images (kept.py), write
the arrays (data/split_arrays.py) and manifest.json (data/manifest.py), and return the summary. The
output appears whole or not at all: files.staged_output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from op_classifier.config import Config
from op_classifier.data.decode import decode_all
from op_classifier.data.kept import check_class_sizes, deduplicate, leave_out
from op_classifier.data.manifest import (
    MANIFEST,
    build_manifest,
    near_duplicates_entry,
    summary_line,
    warning_lines,
    write_manifest,
)
from op_classifier.data.near_duplicates import near_duplicate_groups
from op_classifier.data.raw import UNREADABLE, Inventory, scan, skip_record
from op_classifier.data.split_arrays import write_arrays
from op_classifier.data.splits import assign_splits
from op_classifier.files import staged_output


def run(cfg: Config) -> dict:
    """Prepare paths.raw into paths.prepared (arrays + manifest.json) and return a summary."""
    started = time.perf_counter()
    raw, prepared = Path(cfg.paths.raw), Path(cfg.paths.prepared)
    inventory = scan(raw, cfg.data)
    with staged_output(prepared) as out:
        manifest = prepare_into(out, raw, inventory, cfg)
    seconds = time.perf_counter() - started
    for note in warning_lines(manifest):
        print(note, file=sys.stderr)
    return {
        "did": summary_line(manifest),
        "wrote": str(prepared / MANIFEST),
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
    write_manifest(out, manifest)
    return manifest


def main() -> None:
    """DVC stage entry point: `python -m op_classifier.stages.prepare` with params.yaml."""
    from op_classifier.runner import stage_main

    stage_main(run)


if __name__ == "__main__":
    main()
