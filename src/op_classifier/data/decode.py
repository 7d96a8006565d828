"""Decoding the raw files over all cores into one staging array, each file hashed as it is read.

Each worker writes its rows straight into the staging .npy (arrays.RowFile), so no image is pickled
back to the parent; the parent gets each file's sha256 (exact duplicates), its perceptual hash
(near_duplicates.py; only when data.near_duplicates is on) and why it was skipped, if it was.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from tqdm import tqdm

from op_classifier.config import DataConfig
from op_classifier.data import arrays
from op_classifier.data.images import ImageError, decode_image, read_file
from op_classifier.data.near_duplicates import image_hash
from op_classifier.files import chunk_size, cpu_count, worker_pool


def decode_all(
    raw: Path, paths: Sequence[str], staging: Path, data: DataConfig
) -> tuple[list[str | None], list[bytes | None], list[str | None]]:
    """Decode every file over all cores into the staging array; return per-file sha256, perceptual hash
    (None when data.near_duplicates is off) and skip reason."""
    size = data.image_size
    arrays.create(staging, (len(paths), size, size, 3))  # the workers write their rows into it
    digests: list[str | None] = [None] * len(paths)
    hashes: list[bytes | None] = [None] * len(paths)
    reasons: list[str | None] = [None] * len(paths)
    if not paths:
        return digests, hashes, reasons
    job = partial(
        _decode_file,
        size=size,
        max_pixels=data.max_image_pixels,
        max_bytes=data.max_file_mb * 2**20,
        perceptual=bool(data.near_duplicates),
    )
    workers = min(cpu_count(), len(paths))
    jobs = ((index, str(raw / path)) for index, path in enumerate(paths))
    pool = worker_pool(workers, initializer=_start_worker, initargs=(str(staging),))
    with pool, _progress(len(paths)) as bar:
        for index, digest, phash, reason in pool.imap_unordered(job, jobs, chunksize=chunk_size(len(paths), workers)):
            digests[index], hashes[index], reasons[index] = digest, phash, reason
            bar.update()
    return digests, hashes, reasons


# Each worker's handle on the staging array: writing rows there spares pickling every image to the parent.
_staging: arrays.RowFile | None = None


def _start_worker(staging: str) -> None:
    global _staging
    _staging = arrays.RowFile(Path(staging), writable=True)


def _decode_file(
    job: tuple[int, str], size: int, max_pixels: int, max_bytes: int, perceptual: bool
) -> tuple[int, str | None, bytes | None, str | None]:
    """Worker: decode (index, path) into row index of the staging array; return (index, sha256, perceptual
    hash if asked, skip reason)."""
    index, path = job
    try:
        data = read_file(Path(path), max_bytes)  # regular files only, bounded, sniffed before read whole
    except ImageError as error:
        return index, None, None, str(error)
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels = decode_image(data, size, max_pixels)
    except ImageError as error:
        return index, digest, None, str(error)
    _staging.write(index, pixels[None])
    # Hashed from the pixels the model sees (oriented, over white, resized): no second decode.
    return index, digest, image_hash(pixels) if perceptual else None, None


def _progress(total: int) -> tqdm:
    # disable=None: a bar on a terminal, none in logs and CI where it would be a wall of lines.
    return tqdm(total=total, desc="prepare", unit="img", file=sys.stderr, leave=False, disable=None)
