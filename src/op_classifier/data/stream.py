"""Prepared splits as Keras input streams: uint8 batches read from disk, never the whole array in memory.

A keras.utils.PyDataset works under every Keras backend (no TensorFlow needed under JAX). Images travel
as uint8 (a quarter of float32's bytes); the model's float32 input casts them inside its own graph,
so the served contract (float 0..255 pixels) is unchanged.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import numpy as np

from op_classifier.data.arrays import RowFile
from op_classifier.data.prepared import load_labels
from op_classifier.errors import DataError

# Batches read ahead by threads (pread releases the GIL); the ordered queue keeps the batch order,
# so the number of workers never changes what is trained on.
WORKERS = min(4, os.cpu_count() or 1)
QUEUE = 8


class ImageStream(keras.utils.PyDataset):
    """Batches of one split: (uint8 images, labels), or (uint8 images,) to predict.

    With a seed, every epoch visits the rows in a new order drawn from (seed, epoch number): two
    identical trainings read identical batches. Keras's own `shuffle` must be off (fit(shuffle=False)).
    """

    def __init__(
        self,
        images: Path,
        labels: np.ndarray | None,
        batch_size: int,
        seed: int | None = None,
        workers: int = WORKERS,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=QUEUE)
        self.rows = RowFile(images)
        if labels is not None and len(labels) != len(self.rows):
            raise DataError(f"{images}: {len(self.rows)} images but {len(labels)} labels: re-run the prepare stage")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.labels, self.batch_size, self.seed = labels, batch_size, seed
        self.epoch = 0
        self.order = self._order()

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        # Sorted within the batch: neighbouring rows come in one read; the batch's members are the same.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        images = self.rows.read(rows)
        return (images,) if self.labels is None else (images, self.labels[rows])

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order (Keras calls this after each epoch)."""
        self.epoch += 1
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return epoch_order(len(self.rows), self.seed, self.epoch)


def epoch_order(rows: int, seed: int | None, epoch: int) -> np.ndarray:
    """The order an epoch visits the rows in: drawn from (seed, epoch number); file order without a seed."""
    if seed is None:
        return np.arange(rows)
    return np.random.default_rng([seed, epoch]).permutation(rows)


def split_stream(prepared: Path, split: str, batch_size: int, seed: int | None = None) -> ImageStream:
    """The stream of one prepared split with its labels; shuffled per epoch when a seed is given."""
    return ImageStream(prepared / split / "images.npy", load_labels(prepared, split), batch_size, seed=seed)


def image_stream(prepared: Path, split: str, batch_size: int) -> ImageStream:
    """One split's images only, in file order (for predict)."""
    load_labels(prepared, split)  # the same missing-file message as split_stream
    return ImageStream(prepared / split / "images.npy", None, batch_size)
