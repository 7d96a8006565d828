"""How far two identical CPU trainings differ: same config, same seed, same data, run twice.

Usage: python benchmarks/reproducibility.py [--per-class 100] [--epochs 5]
Prints the largest weight and probability differences and the accuracy of each run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "op-classifier")


def train_once(work: Path, name: str, overrides: list[str]) -> Path:
    """One training (tuner=none, tracking off) into experiments-<name>/; returns its model dir."""
    paths = [f"paths.{key}=experiments-{name}/{key}" for key in ("tuning", "checkpoints", "model")]
    paths += [
        f"paths.{key}=experiments-{name}/{key}.{ext}"
        for key, ext in (("best_hparams", "yaml"), ("leaderboard", "csv"), ("history", "csv"))
    ]
    args = ["tuner=none", "tracking=none", *paths, *overrides]
    for stage in ("tune", "train"):
        subprocess.run([CLI, stage, *args], cwd=work, check=True, capture_output=True)
    return work / f"experiments-{name}/model"


def main() -> None:
    """Train twice, compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    import keras

    work = Path(tempfile.mkdtemp(prefix="op-repro-"))
    shutil.copytree(REPO / "conf", work / "conf")
    subprocess.run(
        [CLI, "sample", "--out", "data/raw", "--per-class", str(args.per_class)],
        cwd=work,
        check=True,
        capture_output=True,
    )
    subprocess.run([CLI, "prepare"], cwd=work, check=True, capture_output=True)
    overrides = [f"train.epochs={args.epochs}", f"train.patience={args.epochs}"]
    models = [
        keras.saving.load_model(train_once(work, name, overrides) / "model.keras", compile=False) for name in ("a", "b")
    ]
    val = np.load(work / "data/prepared/val/images.npy")
    labels = np.load(work / "data/prepared/val/labels.npy")
    single = labels.sum(1) == 1
    probs = [m.predict(val, verbose=0) for m in models]
    weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(models[0].get_weights(), models[1].get_weights()))
    accuracy = [float((p[single].argmax(1) == labels[single].argmax(1)).mean()) for p in probs]
    print(f"two identical CPU trainings ({args.per_class}/class, {args.epochs} epochs, seed from config):")
    print(f"  largest weight difference       {weight_diff:.3g}")
    print(f"  largest probability difference  {float(np.max(np.abs(probs[0] - probs[1]))):.3g}")
    print(f"  val top-1 accuracy              {accuracy[0]:.4f} vs {accuracy[1]:.4f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
