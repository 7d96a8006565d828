"""Colour-histogram + logistic-regression baseline on the prepared single-character images.

It measures how far colour alone gets: if it scores high, a CNN's accuracy says little about
whether it learned the characters' shapes. Usage:

    python benchmarks/baseline_colorhist.py [--prepared data/prepared] [--bins 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SPLITS = ("train", "val", "test")


def load_split(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's single-label images and their class indices (multi-label rows are dropped)."""
    images = np.load(prepared / split / "images.npy", mmap_mode="r")
    labels = np.load(prepared / split / "labels.npy")
    single = labels.sum(axis=1) == 1
    return np.asarray(images[single]), labels[single].argmax(axis=1)


def colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """One normalised bins x bins x bins RGB histogram per image, flattened."""
    quantised = (images.astype(np.int64) * bins) // 256
    codes = (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]
    codes = codes.reshape(len(images), -1)
    # Offsetting each image's codes lets one bincount build every histogram at once
    offsets = np.arange(len(images))[:, None] * bins**3
    counts = np.bincount((codes + offsets).ravel(), minlength=len(images) * bins**3)
    return counts.reshape(len(images), bins**3) / codes.shape[1]


def evaluate(prepared: Path, bins: int = 8) -> dict:
    """Fit on train, return top-1 accuracy on val and test."""
    data = {split: load_split(prepared, split) for split in SPLITS}
    features = {split: colour_histograms(images, bins) for split, (images, _) in data.items()}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(features["train"], data["train"][1])
    result = {"bins": bins, "train_images": len(data["train"][1])}
    for split in ("val", "test"):
        result[f"{split}_images"] = len(data[split][1])
        result[f"{split}_accuracy"] = round(float(model.score(features[split], data[split][1])), 4)
    return result


def main() -> None:
    """Parse arguments, run the baseline, print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"), help="prepare's output folder")
    parser.add_argument("--bins", type=int, default=8, help="bins per RGB channel")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.prepared, args.bins), indent=2))


if __name__ == "__main__":
    main()
