"""Near-duplicate groups: a perceptual hash per image, and groups of images whose hashes are close.

The hash is pHash (imagehash's, 16 x 16 = 256 bits: the signs of the lowest DCT frequencies of a 64 x
64 grayscale copy) of the image cropped to its content, what differs from the colour of its border:
a margin, a padding or a crop of background then changes nothing. Measured in docs/decisions.md
("Near-duplicates share a split"): of the hashes tried, this one groups the most altered copies
while joining the fewest unrelated drawings.

Groups are transitive (a chain of close pairs is one group), built closest pairs first; past
SNOWBALL_SIZE images a group grows only through pairs within half the distance, so that a chain of
loose links cannot swallow a class while a scene of near-identical frames still stays whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIDE = 16  # pHash of HASH_SIDE x HASH_SIDE bits
HASH_BITS = HASH_SIDE * HASH_SIDE
HASH_BYTES = HASH_BITS // 8
HASH_NAME = f"pHash {HASH_BITS}-bit of the content (background trimmed)"
# A pixel is content when a channel differs from the background by more than this share of the image's
# largest difference, and by more than the floor (measured: 0.15 groups more copies than 0.1, 0.2, 0.25,
# 0.35 or a fixed 48 levels; docs/decisions.md).
BACKGROUND_SHARE = 0.15
BACKGROUND_FLOOR = 12
# Beyond this many images a group grows only through pairs within half the distance (measured).
SNOWBALL_SIZE = 32
_BLOCK = 64  # rows compared at once: 64 x 40,000 pairs of 4 words is 20 MB


def image_hash(pixels: np.ndarray) -> bytes:
    """The perceptual hash of a uint8 (H, W, 3) RGB image, HASH_BYTES long."""
    image = Image.fromarray(np.ascontiguousarray(content(pixels)))
    return np.packbits(imagehash.phash(image, hash_size=HASH_SIDE).hash.ravel()).tobytes()


def content(pixels: np.ndarray) -> np.ndarray:
    """The image cropped to the pixels that differ from its border's median colour (all of it if none do)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.rint(np.median(border, axis=0)).astype(np.int16)
    channels = np.abs(pixels.astype(np.int16) - background)
    apart = np.maximum(np.maximum(channels[..., 0], channels[..., 1]), channels[..., 2])  # 10x .max(axis=2)
    # Relative to the image's own contrast, so that a darker copy (a 10% brightness change scales every
    # difference) keeps the same pale parts; the floor keeps JPEG's ringing out of a flat image.
    differs = apart > max(BACKGROUND_FLOOR, BACKGROUND_SHARE * int(apart.max()))
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if rows.size == 0:
        return pixels
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def as_words(hashes: Sequence[bytes]) -> np.ndarray:
    """Hashes as a (N, HASH_BITS / 64) uint64 array, for XOR and popcount."""
    if not hashes:
        return np.zeros((0, HASH_BITS // 64), dtype=np.uint64)
    return np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(len(hashes), -1)


def blocks(words: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, distances of hashes start.. start + _BLOCK to every hash from start on), block by block."""
    n = len(words)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        apart = np.zeros((stop - start, n - start), dtype=np.int32)
        for word in range(words.shape[1]):  # one word at a time: a (block, n) temporary, not four
            apart += np.bitwise_count(words[start:stop, word, None] ^ words[None, start:, word])
        yield start, apart


def close_pairs(words: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair i < j within limit bits, as (i, j, distance) arrays, a block of rows at a time."""
    for start, apart in blocks(words):
        rows, offsets = np.nonzero(np.triu(apart <= limit, k=1))
        yield rows + start, offsets + start, apart[rows, offsets]


def group_ids(hashes: Sequence[bytes], distance: int) -> list[int]:
    """Each image's group, named by its first member's position: images within distance bits are joined,
    transitively, closest pairs first, with the snowball guard (SNOWBALL_SIZE)."""
    words, tight = as_words(hashes), distance // 2
    label = np.arange(len(hashes))
    loose: list[tuple[np.ndarray, ...]] = []
    for rows, columns, apart in close_pairs(words, distance):
        near = apart <= tight  # always joined, whatever the size: so joined now, in any order
        label = _joined(label, rows[near], columns[near])
        rest = ~near & (label[rows] != label[columns])
        loose.append((rows[rest], columns[rest], apart[rest]))
    label = _join_loose(label, loose)
    first = {}
    return [first.setdefault(int(group), position) for position, group in enumerate(label)]


def _joined(label: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Labels after joining the groups of each pair (connected components over the current groups)."""
    a, b = label[rows], label[columns]
    keep = a != b
    if not keep.any():
        return label
    n = len(label)
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (a[keep], b[keep])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return component[label]


def _join_loose(label: np.ndarray, loose: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Join the pairs beyond the tight distance closest first, none past SNOWBALL_SIZE (Kruskal's order)."""
    if not loose:
        return label
    rows, columns, apart = (np.concatenate(parts) for parts in zip(*loose))
    parent = {int(g): int(g) for g in np.unique(label)}
    size = dict(zip(*(values.tolist() for values in np.unique(label, return_counts=True))))
    for k in np.lexsort((columns, rows, apart)):
        a, b = _root(parent, int(label[rows[k]])), _root(parent, int(label[columns[k]]))
        if a != b and size[a] + size[b] <= SNOWBALL_SIZE:
            parent[b] = a
            size[a] += size.pop(b)
    return np.array([_root(parent, int(g)) for g in label])


def _root(parent: dict[int, int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving: later look-ups stay short
        node = parent[node]
    return node


def groups_of(ids: Sequence[int]) -> list[list[int]]:
    """The groups of two or more images, each as sorted positions, in order of their first member."""
    members: dict[int, list[int]] = {}
    for position, group in enumerate(ids):
        members.setdefault(group, []).append(position)
    return [group for group in members.values() if len(group) > 1]


def max_distance(hashes: Sequence[bytes], members: Sequence[int]) -> int:
    """The largest distance between two members of a group (a chain's ends can be far apart)."""
    return max((int(apart.max()) for _, apart in blocks(as_words([hashes[i] for i in members]))), default=0)


def near_duplicate_groups(hashes: Sequence[bytes | None], distance: int | None) -> list[int]:
    """Each kept image's near-duplicate group (data.near_duplicates 0 or null: every image alone)."""
    if not distance:
        return list(range(len(hashes)))
    return group_ids(hashes, distance)
