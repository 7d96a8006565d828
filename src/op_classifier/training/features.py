"""A frozen pretrained backbone's pooled features, computed once: the head's epochs and the search train on them.

While the backbone is frozen and runs in inference mode, every epoch of the head's phase would push
each image through it again for the same output (augmentation aside). Computed once, an epoch of the
head costs milliseconds, so the head trains to convergence and a search can try many heads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from op_classifier import progress
from op_classifier.data.arrays import RowFile
from op_classifier.data.prepared import data_hash, load_labels
from op_classifier.data.stream import epoch_order, split_stream
from op_classifier.errors import DataError, first_line
from op_classifier.models.pretrained import POOLED, top


@dataclass(frozen=True)
class Features:
    """One split's pooled backbone features (float32, N x D) and its multi-hot labels."""

    x: np.ndarray
    y: np.ndarray


def extractor(model: keras.Model) -> keras.Model:
    """The model from its raw pixels to its pooled features (augmentation is idle outside training)."""
    return keras.Model(model.inputs, model.get_layer(POOLED).output, name="features")


def head_of(model: keras.Model) -> keras.Model:
    """The model's layers after the pooled features, as a model of their own: training it trains them."""
    pooled = model.get_layer(POOLED)
    inputs = keras.Input(shape=pooled.output.shape[1:], name="features")
    x = inputs
    for layer in model.layers[model.layers.index(pooled) + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def head_model(dim: int, num_classes: int, dropout: float, seed: int | None) -> keras.Model:
    """A new head over `dim` features, built as every pretrained model's own (models.pretrained.top)."""
    inputs = keras.Input(shape=(dim,), name="features")
    return keras.Model(inputs, top(inputs, num_classes, dropout, seed), name="head")


def compute(net: keras.Model, prepared: Path, split: str, batch_size: int) -> Features:
    """One split's features through the extractor `net`, in file order, with its labels."""
    stream = split_stream(prepared, split, batch_size)
    x = np.asarray(net.predict(stream, verbose=0), dtype="float32")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise DataError(f"the backbone's features of {bad} {split} image(s) are not finite (NaN or inf)")
    return Features(x, stream.labels)


def compute_all(model: keras.Model, prepared: Path, batch_size: int) -> tuple[Features, Features]:
    """The train and val splits' features (the head's phase and the search train on them)."""
    found = of_splits(model, prepared, batch_size, ("train", "val"))
    return found["train"], found["val"]


def of_splits(model: keras.Model, prepared: Path, batch_size: int, splits: Sequence[str]) -> dict[str, Features]:
    """Each split's features: a pass through the backbone, or none when this backbone (its layers and
    weights) already saw these pixels (the search's features serve the training and the audit)."""
    net = extractor(model)
    key = cache_key(net, prepared, batch_size)
    found = {split: _read(cache_dir() / "features" / f"{key}-{split}.npz", net, prepared, split) for split in splits}
    missing = [split for split, kept in found.items() if kept is None]
    keeps = True  # a cache that took no entry is said once, not once a split
    with progress.bar(len(missing), "features", unit="split", shown=bool(missing)) as bar:
        for split in missing:
            bar.set_postfix_str(split)
            found[split] = compute(net, prepared, split, batch_size)
            keeps = keeps and _write(cache_dir() / "features" / f"{key}-{split}.npz", found[split])
            bar.update()
    return found


# One entry is a few MB a thousand images (1280 floats an image); a user trying many datasets or
# backbones would otherwise fill the disk, one entry per (data, backbone, split), silently.
CACHE_BYTES = 2 * 1024**3
CACHE_ENV = "OP_CLASSIFIER_CACHE"  # where features are kept (default: ~/.cache/op-classifier)
PARTIAL = ".partial.npz"
ARRAYS = ("x", "y")  # an entry: one split's features and labels
DIGEST = "sha256"  # the entry's arrays' digest, stored in the entry: damage is found before use
SPOT_ROWS = 4  # rows computed again on every read: an entry must match the backbone's answers
SPOT_TOLERANCE = 1e-3  # of the largest feature: one image's features in another batch differ by < 1e-5 (measured)


def cache_dir() -> Path:
    """The folder of cached features: $OP_CLASSIFIER_CACHE, else $XDG_CACHE_HOME/op-classifier, else ~/.cache/op-classifier."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "op-classifier"


class _Damaged(Exception):
    """A cache entry that cannot be used as it is."""


def _read(path: Path, net: keras.Model, prepared: Path, split: str) -> Features | None:
    """A kept entry once it proved whole and true to this backbone and data; None (with a note) otherwise."""
    if not path.is_file():
        return None
    try:
        found = _verified(_load(path), net, prepared, split)
    except _Damaged as damage:
        _note(f"discarding the feature cache entry {path} ({damage}): computing the features again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):  # a read-only cache is read all the same
        os.utime(path)  # used now: the last to be pruned
    return found


def _verified(arrays: dict[str, np.ndarray], net: keras.Model, prepared: Path, split: str) -> Features:
    """A whole entry, checked: shaped as this split, its labels, finite, and equal to what the backbone
    computes for a few of its rows drawn at random (rows shuffled or replaced are caught)."""
    labels = load_labels(prepared, split)
    x, y = arrays["x"], arrays["y"]
    width = net.output.shape[-1]
    if x.dtype != np.float32 or x.shape != (len(labels), width):
        raise _Damaged(
            f"features of shape {x.shape} {x.dtype}, the {split} split needs ({len(labels)}, {width}) float32"
        )
    if not np.array_equal(y, labels):
        raise _Damaged(f"its labels are not the prepared {split} split's")
    if not np.isfinite(x).all():
        raise _Damaged("its features are not all finite")
    rows = np.sort(np.random.default_rng().choice(len(labels), min(SPOT_ROWS, len(labels)), replace=False))
    images = RowFile(prepared / split / "images.npy").read(rows)
    fresh = np.asarray(net.predict(images, verbose=0), dtype="float32")
    scale = max(1.0, float(np.abs(fresh).max()))
    if not np.allclose(x[rows], fresh, rtol=0, atol=SPOT_TOLERANCE * scale):
        raise _Damaged(f"its features are not this backbone's for these {split} images")
    return Features(x, labels)


def _load(path: Path) -> dict[str, np.ndarray]:
    """The entry's arrays, read whole (zip's checksums), no object arrays, its digest matching."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            missing = [name for name in (*ARRAYS, DIGEST) if name not in entry.files]
            if missing:
                raise _Damaged(f"no array {missing[0]!r}")
            arrays = {name: entry[name] for name in (*ARRAYS, DIGEST)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise _Damaged(first_line(error, 120) or type(error).__name__) from None
    if str(arrays.pop(DIGEST)) != _digest(arrays):
        raise _Damaged("its content does not match its digest")
    return arrays


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ARRAYS:
        value = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, value.dtype.str, value.shape]).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _write(path: Path, features: Features) -> bool:
    """Keep the entry, whole or not at all; a cache that cannot take it is a note, never a failure. Whether kept."""
    arrays = {"x": features.x, "y": features.y}
    partial = path.with_suffix(f".{os.getpid()}{PARTIAL}")  # a killed write leaves no entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **arrays, **{DIGEST: np.array(_digest(arrays))})
        os.replace(partial, path)
        prune(path.parent, CACHE_BYTES)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        _note(f"the features are not kept in the cache {path.parent} ({first_line(error, 120)})")
        return False
    return True


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def prune(folder: Path, limit: int) -> list[Path]:
    """Delete the least recently used entries until the folder holds at most `limit` bytes; the deleted."""
    # Another process's entry being written (<key>.<pid>.partial.npz) is not an entry yet: never touched.
    whole = [entry for entry in folder.glob("*.npz") if not entry.name.endswith(PARTIAL) and entry.is_file()]
    entries = sorted(whole, key=lambda entry: entry.stat().st_mtime, reverse=True)
    total, deleted = 0, []
    for entry in entries:
        total += entry.stat().st_size
        if total > limit and entry is not entries[0]:  # the newest entry stays, whatever its size
            entry.unlink(missing_ok=True)
            deleted.append(entry)
    return deleted


def cache_key(net: keras.Model, prepared: Path, batch_size: int) -> str:
    """What the features depend on: the prepared pixels and labels, the extractor's layers and weights, the backend."""
    digest = hashlib.sha256()
    layers = [(type(layer).__name__, str(layer.output.shape), layer.dtype_policy.name) for layer in net.layers]
    digest.update(json.dumps([data_hash(prepared), keras.backend.backend(), batch_size, layers]).encode())
    for value in net.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:24]


class FeatureStream(keras.utils.PyDataset):
    """Batches of (features, labels), in a new order each epoch drawn from (seed, epoch number), as
    ImageStream draws it: two identical trainings read identical batches (fit(shuffle=False))."""

    def __init__(self, data: Features, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch = 0
        self.order = self._order()

    def __len__(self) -> int:
        return -(-len(self.data.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.data.x[rows], self.data.y[rows]

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order (Keras calls this after each epoch)."""
        self.epoch += 1
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return epoch_order(len(self.data.y), self.seed, self.epoch)
