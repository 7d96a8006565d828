"""Writing the prepared arrays: <split>/images.npy, copied in chunks from the staging array (memory stays
a chunk), and <split>/labels.npy, the multi-hot targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from op_classifier.data import arrays
from op_classifier.data.kept import Kept
from op_classifier.data.splits import SPLITS

_COPY_ROWS = 256  # rows copied per step from the staging array, so memory stays bounded


def write_arrays(out: Path, staging: Path, kept: Kept, splits: Sequence[str], classes: Sequence[str]) -> None:
    """Write <split>/images.npy (copied in chunks from the staging array) and <split>/labels.npy."""
    with arrays.RowFile(staging) as decoded:
        for split in SPLITS:
            members = [i for i, name in enumerate(splits) if name == split]
            (out / split).mkdir()
            arrays.create(out / split / "images.npy", (len(members), *decoded.shape[1:]))
            with arrays.RowFile(out / split / "images.npy", writable=True) as images:
                for start in range(0, len(members), _COPY_ROWS):
                    rows = [kept.rows[i] for i in members[start : start + _COPY_ROWS]]
                    images.write(start, decoded.read(rows))
            np.save(out / split / "labels.npy", multi_hot([kept.labels[i] for i in members], classes))


def multi_hot(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> np.ndarray:
    """float32 (N, C) targets: 1 where the image shows the class."""
    targets = np.zeros((len(labels), len(classes)), dtype=np.float32)
    column = {name: i for i, name in enumerate(classes)}
    for row, image in enumerate(labels):
        targets[row, [column[name] for name in image]] = 1.0
    return targets
