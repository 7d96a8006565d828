"""Prepared image arrays (.npy files) read and written by rows with pread/pwrite, never mapped whole.

Pages read or written through np.memmap count in the process's resident memory (RSS) until the kernel
evicts them, so one pass over a 3.9 GB array through a memory map made a 3.9 GB process. Rows copied
with os.pread/os.pwrite go through the page cache, which the kernel reclaims freely and which is no
process's RSS: memory stays a batch, however large the data set (benchmarks/memory.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from op_classifier.errors import DataError

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def create(path: Path, shape: Sequence[int], dtype: str = "uint8") -> None:
    """An .npy file of this shape (a sparse file of zeros), to be filled by write_rows."""
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))


class RowFile:
    """One C-ordered .npy array on disk, its rows (first axis) read and written by offset."""

    def __init__(self, path: Path, writable: bool = False) -> None:
        self.path, self._fd = Path(path), -1
        try:
            with self.path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = _HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version} not supported")
                shape, fortran, dtype = read_header(handle)
                self.offset = handle.tell()
        except (OSError, ValueError) as error:
            raise DataError(f"{self.path}: not a readable .npy array ({error})") from None
        if fortran or dtype.hasobject or not shape:
            raise DataError(f"{self.path}: expected a C-ordered numeric array with rows")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        # One descriptor for the object's life: pread/pwrite carry their own offsets, so threads may share it.
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows at these indices, in this order (runs of consecutive rows in one read each)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        if not len(indices):
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"{self.path}: row index out of range 0..{len(self) - 1}")
        flat = out.reshape(len(indices), -1).view(np.uint8)
        # Runs where each index is the previous plus one: a sorted batch of a plain split is one run.
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(indices)]):
            self._read_into(flat[start:stop], int(indices[start]))
        return out

    def _read_into(self, buffer: np.ndarray, row: int) -> None:
        view, position = memoryview(buffer).cast("B"), self.offset + row * self.row_bytes
        while len(view):
            got = os.preadv(self._fd, [view], position)
            if got <= 0:
                raise DataError(f"{self.path}: truncated (row {row} beyond its end): re-run the prepare stage")
            view, position = view[got:], position + got

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write rows (of this file's row shape and dtype) from row `start` on."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or start < 0 or start + len(rows) > len(self):
            raise ValueError(f"{self.path}: cannot write {rows.shape} at row {start} of {self.shape}")
        view, position = memoryview(rows.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes
        while len(view):
            put = os.pwrite(self._fd, view, position)
            view, position = view[put:], position + put

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
