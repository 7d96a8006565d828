"""How well the audit finds wrong labels: a seeded share of FOLDER's images moved to another class's folder,
then prepare and the audit stage as a user runs them, and the audit's label issues against the moved list.

Recall: the moved images among the label issues, over all moved. Precision: the moved among the label
issues, over all label issues (a lower bound on a real set whose unmoved labels are arguable). Also at the
top k of the issues ranked by score (k = the number moved), as cleanlab's papers report. Usage:

    python benchmarks/label_noise.py FOLDER [--rates 0.05 0.10] [--seed 0] [--keep DIR] [override ...]
    python benchmarks/label_noise.py sample [...]      # the built-in sample (labels clean by construction)

The moved list of each rate is kept as moved-<rate>.csv beside the copy (--keep), so a run can be checked.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pipeline import copy_repo, sh  # benchmarks/ is this script's folder, first on its path


def images_of(raw: Path) -> dict[str, list[Path]]:
    """FOLDER's class folders and their files (hidden folders, like a download cache, are not classes)."""
    classes = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(p for p in c.rglob("*") if p.is_file()) for c in classes}


def move_some(raw: Path, rate: float, seed: int) -> list[tuple[str, str, str]]:
    """Move a `rate` share of raw's images (class folders only) into another class's folder, seeded:
    (new path, true class, given class) of each."""
    rng = np.random.default_rng(seed)
    found = images_of(raw)
    every = [(name, path) for name, paths in found.items() for path in paths]
    chosen = rng.choice(len(every), round(rate * len(every)), replace=False)
    moved = []
    for index in sorted(chosen):
        true, path = every[index]
        given = rng.choice([name for name in found if name != true])
        target = raw / given / f"moved-{true}-{path.name}"
        path.rename(target)
        moved.append((target.relative_to(raw).as_posix(), true, str(given)))
    return moved


def audit_copy(work: Path, overrides: list[str]) -> tuple[list[dict], float]:
    """prepare and the audit stage in the copy, as `dvc repro audit` runs them; its issues and the time."""
    started = time.perf_counter()
    sh(work, "dvc", "add", "data/raw")  # the README's own-images steps: the moved images are the data now
    sh(work, "op-classifier", "compose", "data.classes=null", *overrides)
    sh(work, "dvc", "repro", "audit")
    with (work / "experiments/audit/issues.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle)), time.perf_counter() - started


def scores(moved: list[tuple[str, str, str]], issues: list[dict]) -> dict[str, float]:
    """Recall, precision and top-k precision of the label issues against the moved images."""
    labels = [row for row in issues if row["kind"] == "label"]  # worst first, as the audit writes them
    flagged = {row["path"] for row in labels}
    truth = {path for path, _, _ in moved}
    top = {row["path"] for row in labels[: len(truth)]}
    hit = {path: row for row in labels for path in [row["path"]] if path in truth}
    right = sum(1 for path, true, _ in moved if path in hit and hit[path]["suggested"] == true)
    return {
        "moved": len(truth),
        "issues": len(flagged),
        "recall": len(truth & flagged) / max(len(truth), 1),
        "precision": len(truth & flagged) / max(len(flagged), 1),
        "top_k_precision": len(truth & top) / max(len(truth), 1),
        "true_class_suggested": right / max(len(truth & flagged), 1),
    }


def main() -> None:
    """Every rate in its own copy; one line each, then JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of class folders, or `sample` for the built-in sample")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="run in DIR/rate-<R> and keep them (default: temporary)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="op-noise-"))
    results = {}
    for rate in args.rates:
        work = root / f"rate-{rate:g}" / "repo"
        copy_repo(work)
        raw = work / "data" / "raw"
        shutil.rmtree(raw, ignore_errors=True)
        if args.folder == "sample":
            sh(work, "op-classifier", "sample", "--out", "data/raw")
        elif not Path(args.folder).is_dir():
            print(f"error: {args.folder} is not a folder", file=sys.stderr)
            sys.exit(2)
        else:
            for cls in images_of(Path(args.folder)):
                shutil.copytree(Path(args.folder) / cls, raw / cls)
        moved = move_some(raw, rate, args.seed)
        with (work.parent / f"moved-{rate:g}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("path", "true", "given"), *moved])
        issues, seconds = audit_copy(work, args.overrides)
        results[rate] = {**scores(moved, issues), "seconds": round(seconds, 1)}
        r = results[rate]
        print(
            f"{args.folder} moved {rate:.0%} ({r['moved']}): label issues {r['issues']}, recall {r['recall']:.3f}, "
            f"precision {r['precision']:.3f}, top-k precision {r['top_k_precision']:.3f}, true class suggested "
            f"{r['true_class_suggested']:.3f} ({r['seconds']:.0f} s)",
            flush=True,
        )
    print(
        json.dumps(
            {"folder": args.folder, "seed": args.seed, "overrides": args.overrides, "results": results}, indent=2
        )
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
