"""The whole pipeline on the built-in sample, timed stage by stage, in a fresh copy of the repository.

Prints wall time per stage, accuracy, multi-character recall, the no-change `dvc repro` time, and
the colour baseline beside the CNN. With `--against REF` (a git commit) it also runs REF's own code
and defaults on the same raw images, stage by stage in turn with this tree's (so a change in the
machine's load falls on both), and prints the two side by side with the ratio of their model time.
Usage (from the repository root, with .venv active or via make):

    python benchmarks/pipeline.py [--keep DIR] [--per-class N] [--against REF] [override ...]

Overrides (Hydra syntax, e.g. train.epochs=10) go to `op-classifier compose` before the run (this
tree's run only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd: str, code: Path | None = None) -> tuple[float, str]:
    """Run a command (importing the package from code/src when given); return (seconds, stdout).

    Fails loudly with the command's output.
    """
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    if code is not None:  # ahead of the installed package, so each copy runs its own code
        env["PYTHONPATH"] = str(code / "src")
    started = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def copy_repo(dst: Path, ref: str | None = None) -> None:
    """The project's files (as git sees them now, or at commit ref), committed in a new repo."""
    if ref is None:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
        ).stdout.decode()
        for rel in filter(None, listed.split("\0")):
            if (REPO / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dst / rel)
    else:
        dst.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True)
        if archive.returncode != 0:
            sys.exit(f"--against {ref}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench"],
    ):
        subprocess.run(["git", *args], cwd=dst, check=True, capture_output=True)


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--per-class", type=int, help="sample size (default: the built-in one)")
    parser.add_argument("--against", metavar="REF", help="also run this commit's pipeline, side by side")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="op-bench-"))
    trees = {"this tree": work / "current"}
    if args.against:
        trees = {f"at {args.against}": work / "ref", **trees}
        copy_repo(trees[f"at {args.against}"], args.against)
    copy_repo(trees["this tree"])
    sample = ["--per-class", str(args.per_class)] if args.per_class else []
    raw = trees["this tree"] / "data/raw"
    sample_seconds = sh(trees["this tree"], "op-classifier", "sample", "--out", str(raw), *sample)[0]
    print(f"sample generation {sample_seconds:.1f} s", flush=True)
    for tree in trees.values():
        if tree / "data/raw" != raw:
            shutil.copytree(raw, tree / "data/raw")
    if args.overrides:
        sh(trees["this tree"], "op-classifier", "compose", *args.overrides, code=trees["this tree"])
    times: dict[str, dict[str, float]] = {name: {} for name in trees}
    for stage in ("prepare", "tune", "train", "evaluate"):
        for name, tree in trees.items():
            times[name][stage] = sh(tree, "dvc", "repro", "--single-item", stage, code=tree)[0]
            print(f"{stage:>9} {name}: {times[name][stage]:7.1f} s", flush=True)
    for name, tree in trees.items():
        noop_seconds, noop_out = sh(tree, "dvc", "repro", code=tree)
        metrics = json.loads((tree / "experiments/metrics.json").read_text())
        _, baseline = sh(tree, "python", str(REPO / "benchmarks/baseline_colorhist.py"), "--prepared", "data/prepared")
        print(f"\n== {name}")
        report(times[name], noop_seconds, "Running stage" in noop_out, metrics, baseline)
    if args.against:
        ref, current = (model_seconds(t) for t in times.values())
        print(
            f"\nprepared data -> metrics: {current:.1f} s vs {ref:.1f} s at {args.against}: ratio {current / ref:.2f}"
        )
    if not args.keep:
        shutil.rmtree(work)


def model_seconds(times: dict[str, float]) -> float:
    """From prepared data to metrics: the model stages' wall time."""
    return times["tune"] + times["train"] + times["evaluate"]


def report(times: dict, noop: float, noop_ran: bool, metrics: dict, baseline: str) -> None:
    """Print the figures."""
    print(f"prepared data -> metrics {model_seconds(times):7.1f} s  (tune + train + evaluate; target <= 600 s)")
    print(f"dvc repro, no change     {noop:7.1f} s  (target < 5 s; a stage re-ran: {noop_ran})")
    print(
        f"CNN top-1 accuracy       val {metrics['val_accuracy']:.4f}  test {metrics['test_accuracy']:.4f}"
        "  (target >= 0.86)"
    )
    scenes = metrics["scenes"]
    if scenes.get("count"):
        print(
            f"multi-character scenes   n={scenes['count']}  mean recall@0.5 {scenes['mean_recall']:.4f}"
            f"  exact-set accuracy {scenes['exact_set_accuracy']:.4f}"
        )
        print(
            "  per-character recall   "
            + "  ".join(f"{k} {v:.3f}" for k, v in scenes["recall"].items() if v is not None)
        )
    colour = json.loads(baseline)
    print(
        f"colour baseline          val {colour['val_accuracy']:.4f}  test {colour['test_accuracy']:.4f}"
        "  (histogram + logistic regression; target <= 0.70)"
    )


if __name__ == "__main__":
    main()
