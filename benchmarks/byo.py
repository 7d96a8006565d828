"""The bring-your-own-images flow on a folder, over several seeds: accuracy mean ± sd, per-class F1, time.

For each seed, a fresh copy of the repository takes FOLDER as data/raw and follows the README's "Your
own images" steps (dvc add data/raw, commit data.dvc, op-classifier compose data.classes=null seed=S,
dvc repro). `seed` draws the split and also seeds initialisation, augmentation and the tuner, so the
spread is over all of them. Usage (from the repository root, with .venv active or via make):

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

FIRST_SEED = 42  # conf/config.yaml's


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


def run_seed(folder: Path, seed: int, work: Path, overrides: list[str]) -> dict:
    """One copy, the README's steps, one `dvc repro`: its metrics and wall time."""
    copy_repo(work)
    shutil.rmtree(work / "data" / "raw", ignore_errors=True)
    for cls in usable(folder):
        shutil.copytree(cls, work / "data" / "raw" / cls.name)
    sh(work, "dvc", "add", "data/raw")
    sh(work, "git", "add", "data.dvc")
    sh(work, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "my images")
    sh(work, "op-classifier", "compose", "data.classes=null", f"seed={seed}", *overrides)
    # prepare and tune, then train alone (its time is the budget a recipe is held to), then evaluate
    times, logs = {}, []
    for target in ("tune", "train", "evaluate"):
        times[target], log = sh(work, "dvc", "repro", target)
        logs.append(log)
    seconds, train_seconds = sum(times.values()), times["train"]
    (work / "repro.log").write_text("".join(logs), encoding="utf-8")
    metrics = json.loads((work / "experiments" / "metrics.json").read_text(encoding="utf-8"))
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "test_f1": {name: s["f1"] for name, s in metrics["test_per_class"].items()},
    }


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
    if args.seeds < 1:
        fail("--seeds must be at least 1")
    runs = []
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        work = (args.keep or Path(tempfile.mkdtemp(prefix="op-byo-"))) / f"seed-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        runs.append(run_seed(args.folder.resolve(), seed, work, args.overrides))
        r = runs[-1]
        print(
            f"seed {seed}: val {r['val_accuracy']:.3f}  test {r['test_accuracy']:.3f}  {r['seconds']:.0f} s"
            f" (train {r['train_seconds']:.0f} s)",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(work.parent, ignore_errors=True)
    print(f"\n{args.folder} ({len(runs)} seeds; overrides: {' '.join(args.overrides) or 'none'})")
    print(f"val accuracy   {spread([r['val_accuracy'] for r in runs])}")
    print(f"test accuracy  {spread([r['test_accuracy'] for r in runs])}")
    print(f"dvc repro      {spread([r['seconds'] for r in runs], 0)} s")
    print(f"train stage    {spread([r['train_seconds'] for r in runs], 0)} s")
    for name in runs[0]["test_f1"]:
        print(f"test F1 {name:<14} {spread([r['test_f1'][name] for r in runs])}")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "runs": runs}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
