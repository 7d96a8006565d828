"""The bring-your-own-images flow on a folder, over several seeds: accuracy mean ± sd, per-class F1, time.

A fresh copy of the repository takes FOLDER as data/raw and follows the README's "Your own images"
steps (dvc add data/raw, commit data.dvc), then `op-classifier repeat --seeds N data.classes=null`
runs the pipeline once per seed (its parent MLflow run holds the mean, sd and 95% interval). `seed`
draws the split and also seeds initialisation, augmentation and the tuner, so the spread is over all
of them. Usage (from the repository root, with .venv active or via make):

    python benchmarks/byo.py FOLDER [--seeds 3] [--keep DIR] [--json OUT] [override ...]

Overrides (Hydra syntax, e.g. model=resnet train.epochs=40) go to `op-classifier compose`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from pipeline import copy_repo, sh  # benchmarks/ is this script's folder, first on its path


def fail(message: str) -> None:
    """Bad input: one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def usable(folder: Path) -> list[Path]:
    """FOLDER's class folders (hidden ones, like a download cache, are not classes)."""
    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        fail(f"{folder} needs at least two class folders (FOLDER/<class>/<images>)")
    return classes


def run_seeds(folder: Path, seeds: int, work: Path, overrides: list[str]) -> list[dict]:
    """One copy, the README's steps, then `op-classifier repeat --seeds N`: each seed's scores and times."""
    copy_repo(work)
    shutil.rmtree(work / "data" / "raw", ignore_errors=True)
    for cls in usable(folder):
        shutil.copytree(cls, work / "data" / "raw" / cls.name)
    sh(work, "dvc", "add", "data/raw")
    sh(work, "git", "add", "data.dvc")
    sh(work, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "my images")
    # Each seed runs prepare, tune, train and evaluate as their own processes, as dvc repro does; the
    # train stage's time is the budget a recipe is held to.
    _, log = sh(work, "op-classifier", "repeat", "--seeds", str(seeds), "--json", "data.classes=null", *overrides)
    (work / "repeat.log").write_text(log, encoding="utf-8")
    summary = json.loads(log[log.index("\n{") :])
    return [
        {
            "seed": int(seed),
            "seconds": round(sum(r["stage_seconds"].values()), 1),
            "train_seconds": r["stage_seconds"]["train"],
            "val_accuracy": r["val_accuracy"],
            "test_accuracy": r["test_accuracy"],
            "test_f1": r["test_f1"],
        }
        for seed, r in summary["seeds"].items()
    ]


def spread(values: list[float], digits: int = 3) -> str:
    """mean ± sample sd (± 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    """Run every seed and print the table and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="run in DIR/seed-<S> and keep them (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    usable(args.folder)
    if args.seeds < 2:
        fail("--seeds must be at least 2")
    work = (args.keep or Path(tempfile.mkdtemp(prefix="op-byo-"))) / "repo"
    work.mkdir(parents=True, exist_ok=True)
    runs = run_seeds(args.folder.resolve(), args.seeds, work, args.overrides)
    for r in runs:
        print(
            f"seed {r['seed']}: val {r['val_accuracy']:.3f}  test {r['test_accuracy']:.3f}  {r['seconds']:.0f} s"
            f" (train {r['train_seconds']:.0f} s)",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(work.parent, ignore_errors=True)
    print(f"\n{args.folder} ({len(runs)} seeds; overrides: {' '.join(args.overrides) or 'none'})")
    print(f"val accuracy   {spread([r['val_accuracy'] for r in runs])}")
    print(f"test accuracy  {spread([r['test_accuracy'] for r in runs])}")
    print(f"pipeline       {spread([r['seconds'] for r in runs], 0)} s")
    print(f"train stage    {spread([r['train_seconds'] for r in runs], 0)} s")
    for name in runs[0]["test_f1"]:
        print(f"test F1 {name:<14} {spread([r['test_f1'][name] for r in runs])}")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "runs": runs}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
