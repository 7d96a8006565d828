"""Two recipes over the same seeds, paired image by image: is B's gain over A beyond noise?

Each argument is a folder of seed folders, as `op-classifier repeat` leaves them (or benchmarks/byo.py
--keep DIR: DIR/repo/experiments/repeats/<stamp>). A seed draws the same split in both recipes, so the
two models of a seed answer the same images: per split, each seed's accuracies, their mean difference
with its sd, and McNemar's exact test pooled over every seed's images (as `op-classifier compare` does
for one pair). Images in one recipe's split and not the other's (near-duplicate groups found at
another image size) are left out of the pairing, and counted. Usage (repository root, .venv active):

    python benchmarks/paired_seeds.py A_REPEATS B_REPEATS [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from op_classifier.compare.paired import mcnemar, read_predictions
from op_classifier.data.prepared import single_label

SPLITS = ("val", "test")


def seeds(folder: Path) -> dict[int, Path]:
    """Seed number -> its predictions file, for every finished seed under folder."""
    found = {
        int(path.parent.parent.name.removeprefix("seed-")): path
        for path in folder.glob("**/seed-*/experiments/predictions.csv")
    }
    if not found:
        sys.exit(f"error: no seed-*/experiments/predictions.csv under {folder}")
    return found


def right(path: Path, split: str) -> dict[str, bool]:
    """Image path -> whether the model's top-1 answer is the label, on the split's single-label images."""
    found = read_predictions(path, str(path))
    rows = found.rows(split)
    labels, scores = found.labels[rows], found.scores[rows]
    single = single_label(labels)
    answers = labels[single].argmax(1) == scores[single].argmax(1)
    images = [found.image[i][0] for i in rows[single]]  # the raw file: the prepared pixels differ by size
    return dict(zip(images, answers.tolist()))


def paired(a: dict[int, Path], b: dict[int, Path]) -> dict:
    """Per split: each common seed's accuracies and the pooled McNemar p over all of them."""
    common = sorted(set(a) & set(b))
    result = {"seeds": common}
    for split in SPLITS:
        per_seed, pooled_a, pooled_b = [], [], []
        for seed in common:
            right_a, right_b = right(a[seed], split), right(b[seed], split)
            # Prepared at another side, a few images' perceptual hashes can join other near-duplicate
            # groups, and so another split: the pair is made on the images both models answered.
            images = sorted(set(right_a) & set(right_b))
            if len(images) < 0.9 * max(len(right_a), len(right_b)):
                sys.exit(f"error: seed {seed}'s {split} splits share too few images ({len(images)})")
            x, y = np.array([right_a[i] for i in images]), np.array([right_b[i] for i in images])
            pooled_a.append(x)
            pooled_b.append(y)
            per_seed.append({"seed": seed, "a": float(x.mean()), "b": float(y.mean()), "images": len(images)})
            per_seed[-1]["unpaired"] = len(set(right_a) ^ set(right_b))
        deltas = [row["b"] - row["a"] for row in per_seed]
        x, y = np.concatenate(pooled_a), np.concatenate(pooled_b)
        result[split] = {
            "per_seed": per_seed,
            "a_mean": statistics.mean(row["a"] for row in per_seed),
            "b_mean": statistics.mean(row["b"] for row in per_seed),
            "delta_mean": statistics.mean(deltas),
            "delta_sd": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            "only_a_right": int((x & ~y).sum()),
            "only_b_right": int((~x & y).sum()),
            "mcnemar_p": mcnemar(x, y),
        }
    return result


def main() -> None:
    """Pair the two folders' seeds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = paired(seeds(args.a), seeds(args.b))
    print(f"seeds {result['seeds']}: A = {args.a}, B = {args.b}")
    for split in SPLITS:
        found = result[split]
        cells = "  ".join(
            f"{r['seed']}: {r['a']:.3f}->{r['b']:.3f} ({r['images']} images, {r['unpaired']} unpaired)"
            for r in found["per_seed"]
        )
        print(
            f"{split:<5} A {found['a_mean']:.3f}  B {found['b_mean']:.3f}  B-A {found['delta_mean']:+.3f} ± {found['delta_sd']:.3f}"
        )
        print(f"      {cells}")
        print(
            f"      images only A got right {found['only_a_right']}, only B {found['only_b_right']}: "
            f"pooled McNemar p {found['mcnemar_p']:.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
