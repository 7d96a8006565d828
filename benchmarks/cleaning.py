"""Does cleaning the training labels pay? Per seed, the README's own-images steps and `dvc repro` on FOLDER
(prepare, audit, tune, train, evaluate), then the audit's label issues that fell in train written to
data/raw/exclude.csv and `dvc repro` again: val and test are the same images (excluded images are split
with the rest, then left out), so the two runs pair, and `paired.compare` gives B - A with its
bootstrap interval and McNemar's p. Usage:

    python benchmarks/cleaning.py FOLDER [--seeds 5] [--first 42] [--only-baseline] [--json OUT] [override ...]

--only-baseline runs the first `dvc repro` alone (e.g. with data.near_duplicates=0: the random split).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from pipeline import copy_repo, sh  # benchmarks/ is this script's folder, first on its path
from scipy.stats import binomtest

from op_classifier.compare import paired


def one_seed(folder: Path, work: Path, seed: int, overrides: list[str], baseline_only: bool) -> dict:
    """The two runs of one seed in a fresh copy: scores of each and their paired comparison."""
    copy_repo(work)
    shutil.rmtree(work / "data" / "raw", ignore_errors=True)
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        shutil.copytree(cls, work / "data" / "raw" / cls.name)
    sh(work, "dvc", "add", "data/raw")
    sh(work, "op-classifier", "compose", "data.classes=null", f"seed={seed}", *overrides)
    seconds, _ = sh(work, "dvc", "repro")
    base = _scores(work)
    kept = work / "base-predictions.csv"
    shutil.copyfile(work / "experiments/predictions.csv", kept)
    result = {"seed": seed, "base": base, "base_seconds": round(seconds, 1)}
    if baseline_only:
        return result
    with (work / "experiments/audit/issues.csv").open(newline="", encoding="utf-8") as handle:
        suspects = [row for row in csv.DictReader(handle) if row["kind"] == "label" and row["split"] == "train"]
    with (work / "data/raw/exclude.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "reason"))
        writer.writerows((row["path"], f"audit: label issue {float(row['score']):.3f}") for row in suspects)
    sh(work, "dvc", "add", "data/raw")
    sh(work, "dvc", "repro")
    a = paired.read_predictions(kept, "before")
    b = paired.read_predictions(work / "experiments/predictions.csv", "after")
    pairs = {split: paired.compare(a, b, split, seed=seed) for split in ("val", "test")}
    return {**result, "excluded": len(suspects), "cleaned": _scores(work), "paired": pairs}


def _scores(work: Path) -> dict[str, float]:
    metrics = json.loads((work / "experiments/metrics.json").read_text(encoding="utf-8"))
    return {key: metrics[key] for key in ("val_accuracy", "test_accuracy")}


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    """Every seed, one line each, then the means and the pooled paired counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first", type=int, default=42)
    parser.add_argument("--only-baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    root = Path(tempfile.mkdtemp(prefix="op-clean-"))
    runs = []
    for seed in range(args.first, args.first + args.seeds):
        run = one_seed(args.folder.resolve(), root / f"seed-{seed}", seed, args.overrides, args.only_baseline)
        runs.append(run)
        line = f"seed {seed}: val {run['base']['val_accuracy']:.3f} test {run['base']['test_accuracy']:.3f}"
        if "cleaned" in run:
            p = run["paired"]
            line += (
                f" | {run['excluded']} train images left out: val {run['cleaned']['val_accuracy']:.3f} (p "
                f"{p['val']['mcnemar_p']:.2f}) test {run['cleaned']['test_accuracy']:.3f} (p {p['test']['mcnemar_p']:.2f})"
            )
        print(line, flush=True)
        shutil.rmtree(root / f"seed-{seed}", ignore_errors=True)
    print(f"\n{args.folder} ({len(runs)} seeds; overrides: {' '.join(args.overrides) or 'none'})")
    for key in ("val_accuracy", "test_accuracy"):
        print(f"{key:<14} base {_spread([r['base'][key] for r in runs])}", end="")
        if runs and "cleaned" in runs[0]:
            split = key.split("_")[0]
            only_a = sum(r["paired"][split]["only_a_right"] for r in runs)
            only_b = sum(r["paired"][split]["only_b_right"] for r in runs)
            cleaned = _spread([r["cleaned"][key] for r in runs])
            pooled = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
            print(
                f"  cleaned {cleaned}  (pooled: {only_a} right only before, {only_b} only after, p {pooled:.3f})",
                end="",
            )
        print()
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "runs": runs}, indent=2), encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
