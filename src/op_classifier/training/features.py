"""A frozen pretrained backbone's pooled features, computed once: the head's epochs and the search train on them.

While the backbone is frozen and runs in inference mode, every epoch of the head's phase would push
each image through it again for the same output (augmentation aside). Computed once, an epoch of the
head costs milliseconds, so the head trains to convergence and a search can try many heads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from op_classifier import progress
from op_classifier.data.prepared import data_hash
from op_classifier.data.stream import epoch_order, split_stream
from op_classifier.models.pretrained import POOLED, top
from op_classifier.weights.imagenet import cache_dir


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


def compute(model: keras.Model, prepared: Path, split: str, batch_size: int) -> Features:
    """One split's features through the model's frozen backbone, in file order, with its labels."""
    stream = split_stream(prepared, split, batch_size)
    x = extractor(model).predict(stream, verbose=0)
    return Features(np.asarray(x, dtype="float32"), stream.labels)


def compute_all(model: keras.Model, prepared: Path, batch_size: int) -> tuple[Features, Features]:
    """The train and val splits' features: a pass through the backbone each, or none when this backbone
    (its layers and weights) already saw this prepared data (the search's features serve the training)."""
    path = cache_dir() / "features" / f"{cache_key(model, prepared, batch_size)}.npz"
    if path.is_file():
        os.utime(path)  # used now: the last to be pruned
        with np.load(path) as kept:
            return Features(kept["train_x"], kept["train_y"]), Features(kept["val_x"], kept["val_y"])
    out = []
    with progress.bar(2, "features", unit="split") as bar:
        for split in ("train", "val"):
            bar.set_postfix_str(split)
            out.append(compute(model, prepared, split, batch_size))
            bar.update()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}{PARTIAL}")  # whole or not at all: a killed write leaves no entry
    np.savez(partial, train_x=out[0].x, train_y=out[0].y, val_x=out[1].x, val_y=out[1].y)
    os.replace(partial, path)
    prune(path.parent, CACHE_BYTES)
    return out[0], out[1]


# One entry is a few MB a thousand images (1280 floats an image); a user trying many datasets or
# backbones would otherwise fill the disk, one entry per (data, backbone) pair, silently.
CACHE_BYTES = 2 * 1024**3
PARTIAL = ".partial.npz"


def prune(folder: Path, limit: int) -> list[Path]:
    """Delete the least recently used entries until the folder holds at most `limit` bytes; the deleted."""
    # Another process's entry being written (<key>.<pid>.partial.npz) is not an entry yet: never touched.
    whole = [entry for entry in folder.glob("*.npz") if not entry.name.endswith(PARTIAL)]
    entries = sorted(whole, key=lambda entry: entry.stat().st_mtime, reverse=True)
    total, deleted = 0, []
    for entry in entries:
        total += entry.stat().st_size
        if total > limit and entry is not entries[0]:  # the newest entry stays, whatever its size
            entry.unlink(missing_ok=True)
            deleted.append(entry)
    return deleted


def cache_key(model: keras.Model, prepared: Path, batch_size: int) -> str:
    """What the features depend on: the prepared data, the extractor's layers and weights, the backend."""
    net = extractor(model)
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
