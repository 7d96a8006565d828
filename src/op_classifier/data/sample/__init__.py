"""The built-in synthetic "Straw Hat" image set: deterministic One Piece look-alikes drawn with Pillow.

Each character keeps the canonical silhouette and marks from the anime (Luffy's straw hat and scar,
Zoro's short green hair, three earrings and sword hilts, Nami's long hair and shoulder tattoo,
Sanji's hair over one eye, curled eyebrow, suit and cigarette), while colour is made an unreliable
cue on purpose: hue jitter, outfit colour swaps, colour-graded and black-and-white manga images,
colourful backgrounds and occluders. A model has to learn shapes to do well.

Every image is rendered from its own random generator seeded with (seed, class, index), so the
bytes do not depend on the number of workers or their order, and regeneration with the same
arguments reproduces the folder's hash exactly (for a pinned Pillow).

This module writes the set; pen.py draws in face units, characters.py draws the four, scene.py makes
each frame (background, figures, occluders, colour treatment, JPEG bytes).
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from op_classifier.data.sample.scene import CLASSES, SIZE, render_scene, render_single
from op_classifier.errors import DataError
from op_classifier.files import chunk_size, cpu_count, staged_output, worker_pool

PER_CLASS = 400
SEED = 0
SCENES_DIR = "scenes"
LABELS_FILE = "labels.csv"

__all__ = [
    "CLASSES",
    "LABELS_FILE",
    "PER_CLASS",
    "SCENES_DIR",
    "SEED",
    "SIZE",
    "generate",
    "render_scene",
    "render_single",
]

Job = tuple[int, int, int]  # (seed, class index or len(CLASSES) for a scene, image index)


def _render(job: Job) -> tuple[str, bytes, tuple[str, ...]]:
    """Render one job in a worker: its relative path, JPEG bytes and labels."""
    seed, k, i = job
    # Each image owns a generator keyed by (seed, class, index): independent of workers and order
    rng = np.random.default_rng([seed, k, i])
    if k < len(CLASSES):
        return f"{CLASSES[k]}/{i:04d}.jpg", render_single(CLASSES[k], rng), (CLASSES[k],)
    data, labels = render_scene(rng)
    return f"{SCENES_DIR}/{i:04d}.jpg", data, labels


# --------------------------------------------------------------------------------------------
# The set


def _check_args(out: Path, per_class: int, scenes: int) -> None:
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    if scenes < 0:
        raise DataError(f"scenes must be 0 or more, got {scenes}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; refusing to overwrite it (choose another --out)")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; refusing to overwrite it (choose another --out)")


def _results(jobs: list[Job], workers: int) -> Iterator[tuple[str, bytes, tuple[str, ...]]]:
    if workers <= 1:
        yield from map(_render, jobs)
        return
    with worker_pool(workers) as pool:
        yield from pool.imap(_render, jobs, chunksize=chunk_size(len(jobs), workers))


def _write(tmp: Path, jobs: list[Job], workers: int) -> None:
    rows = []
    # disable=None: a bar on a terminal, none in logs and CI (as prepare's).
    bar = tqdm(_results(jobs, workers), total=len(jobs), desc="sample", unit="img", file=sys.stderr, disable=None)
    for rel, data, labels in bar:
        (tmp / rel).write_bytes(data)
        if rel.startswith(SCENES_DIR):
            rows.append((rel, "|".join(labels)))
    with open(tmp / LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "labels"])
        writer.writerows(rows)


def _render_into(out: Path, jobs: list[Job], workers: int) -> None:
    # Never over a folder that holds files: `out` was checked empty, and is still refused if filled meanwhile.
    with staged_output(out, overwrite=False) as tmp:
        for folder in (*CLASSES, SCENES_DIR):
            (tmp / folder).mkdir()
        _write(tmp, jobs, workers)


def generate(
    out: Path, per_class: int = PER_CLASS, scenes: int | None = None, seed: int = SEED, *, workers: int | None = None
) -> dict:
    """Render the sample set into `out` (which must be absent or empty); return a summary."""
    out = Path(out)
    scenes = per_class // 2 if scenes is None else scenes
    _check_args(out, per_class, scenes)
    workers = workers or cpu_count()
    jobs = [(seed, k, i) for k in range(len(CLASSES)) for i in range(per_class)]
    jobs += [(seed, len(CLASSES), i) for i in range(scenes)]
    start = time.perf_counter()
    try:
        _render_into(out, jobs, workers)
    except OSError as error:  # disk full, no permission, `out` filled meanwhile: say so in one line
        raise DataError(f"cannot write the sample to {out}: {error.strerror or error}") from error
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "images": len(jobs),
        "per_class": per_class,
        "scenes": scenes,
        "seed": seed,
        "seconds": round(seconds, 2),
        "seconds_per_1000": round(1000 * seconds / len(jobs), 2),
    }
