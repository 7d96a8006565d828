"""Reading the prepare stage's outputs (the only way later stages see the data)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from op_classifier.errors import DataError

RUN_FILE = "run.json"  # in paths.model: the training run, logged model, classes (train writes it)


@dataclass
class Split:
    """One split's images (uint8, N x H x W x 3, memory-mapped) and multi-hot labels (N x C)."""

    images: np.ndarray
    labels: np.ndarray


def single_label(labels: np.ndarray) -> np.ndarray:
    """Mask of the rows with exactly one label: the images top-1 accuracy is measured on."""
    return labels.sum(axis=1) == 1


def top1(labels: np.ndarray, probs: np.ndarray) -> float:
    """Top-1 accuracy on single-label rows (the original notebook's metric)."""
    single = single_label(labels)
    if not single.any():
        return float("nan")
    return float((labels[single].argmax(1) == probs[single].argmax(1)).mean())


def _missing(path: Path) -> DataError:
    return DataError(f"{path} not found: run the prepare stage first (`dvc repro prepare`)")


def load_manifest(prepared: Path, image_size: int | None = None) -> dict:
    """The manifest prepare wrote: classes, counts, per-file split, skipped files. With image_size, the
    data must have been prepared at that size (a model built for another fails deep inside Keras)."""
    path = prepared / "manifest.json"
    if not path.is_file():
        raise _missing(path)
    manifest = json.loads(path.read_text(encoding="utf-8"))
    made = manifest.get("image_size")
    if image_size is not None and made != image_size:
        raise DataError(
            f"{prepared} holds {made}-pixel images, this config's data.image_size is {image_size}: "
            "prepare them again (`dvc repro prepare`, or `op-classifier prepare` with the same overrides)"
        )
    return manifest


def data_hash(prepared: Path) -> str:
    """Fingerprint of the prepared data: its manifest (every file, its split, the classes) and the content
    of every split's arrays, so pixels changed under the same file list are other data."""
    path = prepared / "manifest.json"
    if not path.is_file():
        raise _missing(path)
    digest = hashlib.sha256(path.read_bytes())
    for array in sorted(prepared.glob("*/*.npy")):
        stat = array.stat()
        digest.update(array.relative_to(prepared).as_posix().encode())
        digest.update(_file_sha256(str(array), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino).encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    # Remembered per file version: each stage asks several times, and hashing reads every pixel (1.4 GB/s).
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dvc_hash(raw: Path) -> str | None:
    """DVC's hash of the raw folder, from the .dvc file that tracks it (beside it or in the cwd)."""
    import yaml

    target = raw.resolve()
    for dvc_file in sorted({*Path.cwd().glob("*.dvc"), *raw.parent.glob("*.dvc")}):
        try:
            outs = yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("outs") or []
        except (OSError, AttributeError, yaml.YAMLError):
            continue  # not a .dvc file of ours to read: it tracks something else
        for out in outs:
            if (dvc_file.parent / str(out.get("path", ""))).resolve() == target and out.get("md5"):
                return str(out["md5"])
    return None


def load_labels(prepared: Path, split: str) -> np.ndarray:
    """One split's multi-hot labels (N x C, small enough to hold), after checking its images exist."""
    folder = prepared / split
    for name in ("images.npy", "labels.npy"):
        if not (folder / name).is_file():
            raise _missing(folder / name)
    labels = np.load(folder / "labels.npy")
    if len(labels) == 0:
        raise DataError(f"{folder} holds no images: check the prepare stage's manifest")
    return labels


def load_split(prepared: Path, split: str) -> Split:
    """One split, its images memory-mapped so a large set need not fit in memory."""
    folder = prepared / split
    for name in ("images.npy", "labels.npy"):
        if not (folder / name).is_file():
            raise _missing(folder / name)
    split_data = Split(np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy"))
    if len(split_data.images) == 0:
        raise DataError(f"{folder} holds no images: check the prepare stage's manifest")
    return split_data
