"""The whole pipeline on the built-in sample, timed stage by stage, in a fresh copy of the repository.

Prints wall time per stage, accuracy, multi-character recall, the no-change `dvc repro` time, and
the colour baseline beside the CNN. Usage (from the repository root, with .venv active or via make):

    python benchmarks/pipeline.py [--keep DIR] [--per-class N] [override ...]

Overrides (Hydra syntax, e.g. train.epochs=10) go to `op-classifier compose` before the run.
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


def sh(cwd: Path, *cmd: str) -> tuple[float, str]:
    """Run a command; return (seconds, stdout). Fails loudly with the command's output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def copy_repo(dst: Path) -> None:
    """The project's files as git sees them (tracked and not ignored), committed in a new repo."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
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
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="op-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_repo(work)
    sample = ["--per-class", str(args.per_class)] if args.per_class else []
    times = {"sample": sh(work, "op-classifier", "sample", "--out", "data/raw", *sample)[0]}
    if args.overrides:
        sh(work, "op-classifier", "compose", *args.overrides)
    for stage in ("prepare", "tune", "train", "evaluate"):
        times[stage] = sh(work, "dvc", "repro", "--single-item", stage)[0]
        print(f"{stage:>9}: {times[stage]:7.1f} s", flush=True)
    noop_seconds, noop_out = sh(work, "dvc", "repro")
    metrics = json.loads((work / "experiments/metrics.json").read_text())
    _, baseline = sh(work, "python", str(REPO / "benchmarks/baseline_colorhist.py"), "--prepared", "data/prepared")
    report(times, noop_seconds, "Running stage" in noop_out, metrics, baseline)
    if not args.keep:
        shutil.rmtree(work)


def report(times: dict, noop: float, noop_ran: bool, metrics: dict, baseline: str) -> None:
    """Print the figures."""
    model_stages = times["tune"] + times["train"] + times["evaluate"]
    print(f"\nsample generation        {times['sample']:7.1f} s")
    print(f"prepared data -> metrics {model_stages:7.1f} s  (tune + train + evaluate; target <= 600 s)")
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
