"""Near-duplicate grouping measured on a folder: altered copies injected, where they land, what joins.

FOLDER (one sub-folder per class, as data/raw) is copied to a temporary folder with altered copies of
--copies of its images (seeded): each resized to 80%, cropped by 4% from one side, brightened or
darkened by 10% and saved as JPEG at quality 70, in its original's folder. prepare then runs on it
with grouping on (data.near_duplicates, --distance or the configured one) and off, and this prints:
how many copies are grouped with their original, how many land in another split than it (on and
off), the groups (how many, the largest, how many span classes) and the time of each run.

    python benchmarks/near_duplicates.py FOLDER [--copies 50] [--seed 0] [--distance D]
        [--sweep 48,56,64,...] [--compare] [--scale 40000] [--sheet docs/img/near-duplicates.png]
        [override ...]

--sweep also groups the same hashes at other distances (recall, pairs within the distance, pairs
across classes, groups, largest group with and without the snowball guard); --compare sets other
perceptual hashes side by side (each at the distance that keeps 95% of the copies: how many pairs of
unrelated classes it joins); --scale times the grouping alone on N random hashes (and on N hashes in
scenes of 100 drifting frames); --sheet draws sample groups, one row each. Overrides (Hydra syntax,
e.g. data.image_size=224) go to the composed config.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from op_classifier import config
from op_classifier.data import near_duplicates
from op_classifier.data.decode import decode_all
from op_classifier.data.images import ImageError, load_image, to_rgb
from op_classifier.data.manifest import MANIFEST
from op_classifier.data.raw import scan
from op_classifier.stages import prepare

REPO = Path(__file__).resolve().parents[1]

COPY_SUFFIX = ".near-copy.jpg"


def altered(path: Path, rng: np.random.Generator) -> bytes:
    """The issue's copy of an image: 4% cropped from one side, resized to 80%, brightness +-10%, JPEG q70."""
    with Image.open(path) as image:
        image.load()
        rgb = to_rgb(image)  # transparency over white, as prepare sees it
    width, height = rgb.size
    dx, dy = round(width * 0.04), round(height * 0.04)
    side = int(rng.integers(4))
    rgb = rgb.crop(
        [(dx, 0, width, height), (0, 0, width - dx, height), (0, dy, width, height), (0, 0, width, height - dy)][side]
    )
    rgb = rgb.resize((max(1, round(rgb.width * 0.8)), max(1, round(rgb.height * 0.8))), Image.Resampling.BILINEAR)
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.choice([0.9, 1.1])))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def inject(folder: Path, raw: Path, copies: int, seed: int) -> dict[str, str]:
    """Copy FOLDER's class folders to raw and add altered copies; return {copy path: original path}."""
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        shutil.copytree(cls, raw / cls.name)
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    rng = np.random.default_rng(seed)
    made: dict[str, str] = {}
    for index in rng.permutation(len(files)):
        if len(made) == copies:
            break
        original = files[index]
        try:
            load_image(original, 32, 89_478_485)  # prepare must keep the original too
            data = altered(original, rng)
        except (ImageError, OSError):
            continue
        copy = original.with_name(original.stem + COPY_SUFFIX)
        copy.write_bytes(data)
        made[copy.relative_to(raw).as_posix()] = original.relative_to(raw).as_posix()
    return made


def compose(*overrides: str) -> config.Config:
    """The repository's conf/ with overrides, validated, as a stage receives it."""
    return config.load(overrides, conf_dir=REPO / config.CONF_DIR)


def run_prepare(raw: Path, out: Path, overrides: list[str]) -> tuple[dict, float]:
    """prepare on raw into out: its manifest and seconds."""
    cfg = compose(f"paths.raw={raw}", f"paths.prepared={out}", "data.classes=null", *overrides)
    started = time.perf_counter()
    prepare.run(cfg)
    seconds = time.perf_counter() - started
    return json.loads((out / MANIFEST).read_text(encoding="utf-8")), seconds


def copies_report(manifest: dict, made: dict[str, str]) -> tuple[int, int]:
    """(copies in their original's group, copies in another split than their original)."""
    files = {entry["path"]: entry for entry in manifest["files"]}
    group = {path: entry.get("near_duplicate_group", path) for path, entry in files.items()}
    pairs = [(copy, original) for copy, original in made.items() if copy in files and original in files]
    grouped = sum(group[copy] == group[original] for copy, original in pairs)
    apart = sum(files[copy]["split"] != files[original]["split"] for copy, original in pairs)
    return grouped, apart


def groups_report(manifest: dict, made: dict[str, str]) -> str:
    """Groups among the folder's own images (copies left out): how many, the largest, across classes."""
    labels = {entry["path"]: tuple(entry["labels"]) for entry in manifest["files"]}
    own = [[p for p in group["paths"] if p not in made] for group in manifest["near_duplicates"]["groups"]]
    own = [group for group in own if len(group) > 1]
    mixed = [group for group in own if len({labels[p] for p in group}) > 1]
    cross = sum(labels[a] != labels[b] for group in own for i, a in enumerate(group) for b in group[i + 1 :])
    largest = max((len(group) for group in own), default=0)
    return (
        f"{sum(map(len, own))} of its images in {len(own)} groups, largest {largest}; "
        f"{len(mixed)} groups span classes ({cross} member pairs of different classes)"
    )


def sweep(raw: Path, made: dict[str, str], distances: list[int], overrides: list[str]) -> None:
    """Hash once with prepare's own decoding, then group at each distance (also without the snowball guard)."""
    cfg = compose(f"paths.raw={raw}", "data.classes=null", "data.near_duplicates=1", *overrides)
    inventory = scan(raw, cfg.data)
    with tempfile.TemporaryDirectory() as scratch:
        _, hashes, reasons = decode_all(raw, inventory.paths, Path(scratch) / "staging.npy", cfg.data)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    hashes, paths = [hashes[i] for i in kept], [inventory.paths[i] for i in kept]
    labels = [inventory.labels[i] for i in kept]
    position = {path: k for k, path in enumerate(paths)}
    own = np.array([path not in made for path in paths])
    words = near_duplicates.as_words(hashes)
    print("distance  copies grouped  pairs within (across classes)  groups  images  largest (unguarded)  seconds")
    for distance in distances:
        started = time.perf_counter()
        ids = near_duplicates.group_ids(hashes, distance)
        seconds = time.perf_counter() - started
        grouped = np.mean([ids[position[c]] == ids[position[o]] for c, o in made.items() if {c, o} <= position.keys()])
        pairs = across = 0
        for rows, columns, _ in near_duplicates.close_pairs(words, distance):
            mine = own[rows] & own[columns]
            pairs += int(mine.sum())
            across += sum(labels[r] != labels[c] for r, c in zip(rows[mine], columns[mine]))
        sizes = [int(own[g].sum()) for g in near_duplicates.groups_of(ids) if own[g].sum() > 1]
        unguarded = max(
            (int(own[g].sum()) for g in near_duplicates.groups_of(unguarded_ids(hashes, distance))), default=0
        )
        print(
            f"{distance:8d}  {grouped:14.3f}  {pairs:12d} ({across:4d})          {len(sizes):6d}  {sum(sizes):6d}"
            f"  {max(sizes, default=0):7d} ({unguarded:9d})  {seconds:7.2f}"
        )


CANDIDATES = {  # name: (imagehash function, hash side, hashed on the content only)
    "aHash 64, whole image": (imagehash.average_hash, 8, False),
    "dHash 64, whole image": (imagehash.dhash, 8, False),
    "pHash 64, whole image": (imagehash.phash, 8, False),
    "wHash 64, whole image": (imagehash.whash, 8, False),
    "dHash 64, content": (imagehash.dhash, 8, True),
    "pHash 64, content": (imagehash.phash, 8, True),
    "pHash 256, whole image": (imagehash.phash, 16, False),
    "dHash 256, content": (imagehash.dhash, 16, True),
    "pHash 256, content (prepare's)": (imagehash.phash, 16, True),
}


def compare(raw: Path, made: dict[str, str], size: int) -> None:
    """Each candidate hash at the distance that keeps 95% of the copies with their original: how many pairs
    of the folder's own images it joins, and how many of them across classes (wrong, or a label conflict)."""
    paths = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    pixels, labels = {}, {}
    for path in paths:
        try:
            pixels[path], labels[path] = load_image(raw / path, size, 89_478_485), path.split("/")[0]
        except ImageError:
            continue
    own = [path for path in pixels if path not in made]
    print(f"hash (at {size} px)                 copies' 95th pct  pairs within it (across classes)")
    for name, (function, side, trimmed) in CANDIDATES.items():
        bits = {
            path: np.packbits(
                function(
                    Image.fromarray(np.ascontiguousarray(near_duplicates.content(image) if trimmed else image)),
                    hash_size=side,
                ).hash.ravel()
            ).tobytes()
            for path, image in pixels.items()
        }
        copies = (
            near_duplicates.as_words([bits[c] for c in made]),
            near_duplicates.as_words([bits[o] for o in made.values()]),
        )
        distance = int(np.percentile(np.bitwise_count(copies[0] ^ copies[1]).sum(axis=1), 95))
        words, pairs, across = near_duplicates.as_words([bits[p] for p in own]), 0, 0
        for rows, columns, _ in near_duplicates.close_pairs(words, distance):
            pairs += len(rows)
            across += sum(labels[own[r]] != labels[own[c]] for r, c in zip(rows, columns))
        print(f"{name:34s} {distance:4d} of {side * side:3d}        {pairs:6d} ({across:5d})")


def unguarded_ids(hashes: list[bytes], distance: int) -> list[int]:
    """group_ids with no snowball guard: what the guard prevents."""
    guard = near_duplicates.SNOWBALL_SIZE
    near_duplicates.SNOWBALL_SIZE = len(hashes) + 1
    try:
        return near_duplicates.group_ids(hashes, distance)
    finally:
        near_duplicates.SNOWBALL_SIZE = guard


def scale(n: int, distance: int) -> None:
    """Seconds to group n random hashes, and n hashes in scenes of 100 frames drifting 3 bits a frame."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (n, near_duplicates.HASH_BITS), dtype=np.uint8)
    for name in ("random", "scenes of 100 frames"):
        hashes = [row.tobytes() for row in np.packbits(bits, axis=1)]
        started = time.perf_counter()
        ids = near_duplicates.group_ids(hashes, distance)
        sizes = sorted({len(g) for g in near_duplicates.groups_of(ids)})
        print(f"{n:,} hashes, {name}: grouped in {time.perf_counter() - started:.1f} s; group sizes {sizes or 'none'}")
        for frame in range(n):  # the second pass: each frame its predecessor with 3 bits flipped
            if frame % 100:
                bits[frame] = bits[frame - 1]
                bits[frame, rng.choice(near_duplicates.HASH_BITS, 3, replace=False)] ^= 1


def sheet(raw: Path, manifest: dict, made: dict[str, str], out: Path, rows: int = 10, side: int = 96) -> None:
    """Sample groups as a PNG: the largest, the loosest (largest distance inside) and injected copies."""
    groups = manifest["near_duplicates"]["groups"]
    with_copy = [g for g in groups if any(p in made for p in g["paths"])]
    largest = sorted(groups, key=lambda g: -len(g["paths"]))
    loosest = sorted(groups, key=lambda g: -g["max_distance"])
    picked: list[dict] = []
    for group in [*largest[:3], *loosest[:4], *with_copy[:3], *largest[3:]]:
        if group not in picked and len(picked) < rows:
            picked.append(group)
    label_width, most = 150, max(min(len(g["paths"]), 10) for g in picked)
    image = Image.new("RGB", (label_width + most * side, len(picked) * side), "white")
    draw = ImageDraw.Draw(image)
    for row, group in enumerate(picked):
        copies = sum(path in made for path in group["paths"])
        kind = f"{len(group['paths'])} images" + (f",\n{copies} injected copy" if copies else "")
        text = f"{kind}\nmax distance {group['max_distance']}\nsplit: {group['split']}"
        draw.text((4, row * side + 4), text, fill="black")
        for column, path in enumerate(group["paths"][:10]):
            thumb = Image.fromarray(load_image(raw / path, side - 6, 89_478_485))
            image.paste(thumb, (label_width + column * side + 3, row * side + 3))
        draw.line([(0, (row + 1) * side - 1), (image.width, (row + 1) * side - 1)], fill="gray")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    print(f"wrote {out} ({len(picked)} groups)")


def main() -> None:
    """Parse, inject, run prepare on and off, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distance", type=int, help="data.near_duplicates (default: the configured one)")
    parser.add_argument("--sweep", default="", help="comma-separated distances to compare")
    parser.add_argument("--scale", type=int, help="also time the grouping of this many hashes")
    parser.add_argument("--sheet", type=Path, help="draw sample groups into this PNG")
    parser.add_argument("--compare", action="store_true", help="also compare other perceptual hashes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    overrides = [*args.overrides, *([f"data.near_duplicates={args.distance}"] if args.distance is not None else [])]
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw"
        made = inject(args.folder, raw, args.copies, args.seed)
        on, on_seconds = run_prepare(raw, Path(scratch) / "on", overrides)
        off, off_seconds = run_prepare(raw, Path(scratch) / "off", [*overrides, "data.near_duplicates=0"])
        grouped, apart = copies_report(on, made)
        _, apart_off = copies_report(off, made)
        near = on["near_duplicates"]
        print(
            f"{len(made)} altered copies of {args.folder} (seed {args.seed}); {near['hash']}, distance {near['distance']}"
        )
        print(f"copies grouped with their original: {grouped} of {len(made)} ({grouped / len(made):.1%})")
        print(f"copies in another split than their original: {apart} with grouping, {apart_off} without")
        print(f"groups: {near['images']} images in {len(near['groups'])}; {groups_report(on, made)}")
        print(
            f"prepare: {on_seconds:.1f} s with grouping, {off_seconds:.1f} s without ({on['counts']} / {off['counts']})"
        )
        if args.sweep:
            sweep(raw, made, [int(d) for d in args.sweep.split(",")], args.overrides)
        if args.sheet:
            sheet(raw, on, made, args.sheet)
        if args.compare:
            compare(raw, made, on["image_size"])
    if args.scale:
        scale(args.scale, near["distance"])


if __name__ == "__main__":
    main()
