"""The prepare stage on small generated image sets: bad inputs, labels, duplicates, split, output."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from op_classifier import config
from op_classifier.data import manifest as manifests
from op_classifier.data import raw as raw_folder
from op_classifier.data import splits
from op_classifier.data.images import ImageError, read_file
from op_classifier.errors import DataError
from op_classifier.stages import prepare
from tests.conftest import png_header_only

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Luffy", "Nami", "Sanji", "Zoro"]
SIZE = 32  # data.image_size in these tests
RED, WHITE = (255, 0, 0), (255, 255, 255)


# --- helpers ---------------------------------------------------------------------------------------


def distinct_image(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """Three random shapes on a random colour: no two seeds give the same file, nor near-duplicates.

    (Flat colours with a few odd pixels were not: to a grayscale perceptual hash each is a flat field with
    specks, and 4 of the 7,140 pairs of the 120 used here fell within data.near_duplicates at 32 px; of
    500 of these, no pair at 32 px and 1 of 124,750 at 180 px.)
    """
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        width, height = (int(rng.integers(side // 4, side * 3 // 4 + 1)) for side in size)
        x, y = int(rng.integers(0, size[0] - width + 1)), int(rng.integers(0, size[1] - height + 1))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + width, y + height], fill=colour)
    return image


def save(image: Image.Image, path: Path, fmt: str = "PNG", **options: object) -> Path:
    """Save an image in the given format, whatever the file name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)
    return path


def write_dataset(raw: Path, per_class: int = 3, classes: list[str] = CLASSES, seed: int = 0) -> list[str]:
    """raw/<class>/<n>.png for every class; returns the relative paths."""
    written = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(distinct_image(seed + 1000 * c + i), raw / name / f"{i:03d}.png")
            written.append(f"{name}/{i:03d}.png")
    return written


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def load_manifest(cfg: config.Config) -> dict:
    return json.loads((Path(cfg.paths.prepared) / manifests.MANIFEST).read_text(encoding="utf-8"))


def skipped(manifest: dict, path: str) -> dict:
    """The manifest's skip entry of one path (fails the test when the path was not skipped)."""
    found = [entry for entry in manifest["skipped"] if entry["path"] == path]
    assert found, f"{path} not skipped; skipped: {manifest['skipped']}"
    return found[0]


def pixels_of(cfg: config.Config, manifest: dict, path: str) -> np.ndarray:
    """The prepared (SIZE, SIZE, 3) array of one raw file."""
    entry = next(e for e in manifest["files"] if e["path"] == path)
    images = np.load(Path(cfg.paths.prepared) / entry["split"] / "images.npy", mmap_mode="r")
    return np.asarray(images[entry["index"]])


def run_prepare(make_cfg: Callable[..., config.Config], *overrides: str) -> tuple[config.Config, dict, dict]:
    cfg = make_cfg(f"data.image_size={SIZE}", *overrides)
    summary = prepare.run(cfg)
    return cfg, summary, load_manifest(cfg)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return tmp_path / "raw"


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG", quality=95)
    return data[: int(len(data) * 0.6)]


# --- files that must be skipped, each with its reason --------------------------------------------------

BAD_FILES = {
    "zero-byte": (lambda: b"", "empty file"),
    "truncated-jpeg": (truncated_jpeg, "truncated"),
    "text-as-jpg": (lambda: b"just some notes\nabout Luffy\n", "not an image (a text file)"),
    "html-as-jpg": (lambda: b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>", "html page"),
    "random-bytes": (lambda: np.random.default_rng(3).bytes(4096), "not an image"),
    "bomb-header": (lambda: png_header_only(100_000, 100_000), "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_skipped_with_reason(make_cfg, raw: Path, case: str) -> None:
    write_dataset(raw)
    make, expected = BAD_FILES[case]
    (raw / "Nami" / "bad.jpg").write_bytes(make())
    cfg, summary, manifest = run_prepare(make_cfg)
    entry = skipped(manifest, "Nami/bad.jpg")
    assert expected in entry["reason"].lower()
    assert entry["kind"] == raw_folder.UNREADABLE
    assert sum(manifest["counts"].values()) == 12 and summary["skipped"] == 1
    assert "Nami/bad.jpg" not in {e["path"] for e in manifest["files"]}


def test_image_over_max_image_pixels_is_refused(make_cfg, raw: Path) -> None:
    write_dataset(raw)  # 24x20 = 480 pixels each
    save(distinct_image(99, size=(64, 64)), raw / "Zoro" / "big.png")
    _, _, manifest = run_prepare(make_cfg, "data.max_image_pixels=1000")
    assert "over data.max_image_pixels" in skipped(manifest, "Zoro/big.png")["reason"]
    assert sum(manifest["counts"].values()) == 12


def test_a_fifo_is_skipped_unread_and_prepare_ends(make_cfg, raw: Path) -> None:
    """A FIFO in data/raw hung prepare for ever (issue 25): it is named and skipped without being opened
    for a writer that never comes."""
    write_dataset(raw)
    os.mkfifo(raw / "Nami" / "pipe.jpg")
    _, summary, manifest = run_prepare(make_cfg)
    assert skipped(manifest, "Nami/pipe.jpg")["reason"] == "not a regular file (a FIFO); not read"
    assert sum(manifest["counts"].values()) == 12 and summary["skipped"] == 1


def test_a_file_over_max_file_mb_or_not_starting_as_an_image_is_refused_unread(make_cfg, raw: Path) -> None:
    """A 3 GB non-image was read whole (3.19 GB of memory) before being refused (issue 25)."""
    write_dataset(raw)
    with open(raw / "Zoro" / "huge.jpg", "wb") as sparse:  # 2 MiB on paper, nothing on disk
        sparse.truncate(2 * 2**20)
    (raw / "Zoro" / "notes.jpg").write_bytes(b"notes " * 100_000)
    _, _, manifest = run_prepare(make_cfg, "data.max_file_mb=1")
    reason = "2,097,152 bytes, over the 1,048,576-byte limit (data.max_file_mb); not read"
    assert skipped(manifest, "Zoro/huge.jpg")["reason"] == reason
    assert skipped(manifest, "Zoro/notes.jpg")["reason"] == "not an image (a text file)"
    assert sum(manifest["counts"].values()) == 12


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts the bytes read through Linux's /proc/self/io")
def test_a_file_that_does_not_start_as_an_image_is_read_no_further(tmp_path: Path) -> None:
    def read_so_far() -> int:
        return int(Path("/proc/self/io").read_text().split("rchar: ")[1].split()[0])

    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"notes " * 1_000_000)  # 6 MB
    with pytest.raises(ImageError):
        read_file(notes)  # once before counting: Pillow loads its format plugins (their files count too)
    before = read_so_far()
    with pytest.raises(ImageError, match=r"^not an image \(a text file\)$"):
        read_file(notes)
    assert read_so_far() - before < 100_000


# --- files that must be accepted, decoded by content and converted to RGB -------------------------------


def test_png_named_jpg_is_decoded(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    save(Image.new("RGB", (24, 20), (10, 200, 30)), raw / "Luffy" / "really_png.jpg", "PNG")
    cfg, _, manifest = run_prepare(make_cfg)
    assert (pixels_of(cfg, manifest, "Luffy/really_png.jpg") == (10, 200, 30)).all()


def test_rgba_is_composited_over_white(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent black...
    image.paste((255, 0, 0, 255), (0, 0, 16, 32))  # ...with an opaque red left half
    save(image, raw / "Luffy" / "alpha.png")
    cfg, _, manifest = run_prepare(make_cfg)
    pixels = pixels_of(cfg, manifest, "Luffy/alpha.png")
    assert tuple(pixels[5, 2]) == RED and tuple(pixels[5, 29]) == WHITE


def test_palette_images_convert_with_transparency_over_white(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.paste(2, (16, 0, 32, 32))  # right half: palette index 2, blue
    save(palette, raw / "Nami" / "palette.png")
    see_through = palette.copy()
    see_through.info["transparency"] = 2  # blue becomes transparent
    save(see_through, raw / "Nami" / "palette_transparent.png", transparency=2)
    cfg, _, manifest = run_prepare(make_cfg)
    plain = pixels_of(cfg, manifest, "Nami/palette.png")
    assert tuple(plain[5, 2]) == RED and tuple(plain[5, 29]) == (0, 0, 255)
    transparent = pixels_of(cfg, manifest, "Nami/palette_transparent.png")
    assert tuple(transparent[5, 2]) == RED and tuple(transparent[5, 29]) == WHITE


def test_grayscale_and_cmyk_become_rgb(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    save(Image.new("L", (24, 20), 100), raw / "Sanji" / "gray.png")
    save(Image.new("1", (24, 20), 1), raw / "Sanji" / "bilevel.png")
    save(Image.new("CMYK", (24, 20), (0, 255, 255, 0)), raw / "Sanji" / "cmyk.jpg", "JPEG", quality=95)
    cfg, _, manifest = run_prepare(make_cfg)
    assert (pixels_of(cfg, manifest, "Sanji/gray.png") == 100).all()
    assert (pixels_of(cfg, manifest, "Sanji/bilevel.png") == 255).all()
    assert np.abs(pixels_of(cfg, manifest, "Sanji/cmyk.jpg").astype(int) - RED).max() <= 8


def test_16_bit_is_scaled_not_clipped(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    levels = np.array([0, 1000, 32896, 65535], dtype=np.uint16)  # -> 0, 4, 128, 255
    save(Image.fromarray(np.repeat(np.repeat(levels[None, :], 32, 0), 8, 1)), raw / "Zoro" / "deep.png")
    assert Image.open(raw / "Zoro" / "deep.png").mode == "I;16"
    cfg, _, manifest = run_prepare(make_cfg)
    row = pixels_of(cfg, manifest, "Zoro/deep.png")[5, :, 0]
    assert [row[2], row[12], row[20], row[29]] == [0, 4, 128, 255]


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(make_cfg, raw: Path, orientation: int) -> None:
    write_dataset(raw)
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste(RED, (0, 0, 10, 10))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    save(stored, raw / "Luffy" / "phone.jpg", "JPEG", quality=95, exif=exif)
    cfg, _, manifest = run_prepare(make_cfg)
    pixels = pixels_of(cfg, manifest, "Luffy/phone.jpg").astype(int)
    # 6: shown turned clockwise, the marker lands top-right; 8: counter-clockwise, bottom-left.
    corner = pixels[2, SIZE - 3] if orientation == 6 else pixels[SIZE - 3, 2]
    assert np.abs(corner - RED).max() < 40
    assert np.abs(pixels[2, 2] - (0, 0, 255)).max() < 40  # the stored corner no longer shows the marker


def test_gif_and_webp_first_frame(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    frames = [Image.new("RGB", (24, 20), RED), Image.new("RGB", (24, 20), (0, 255, 0))]
    save(frames[0], raw / "Zoro" / "anim.gif", "GIF", save_all=True, append_images=frames[1:])
    save(frames[0], raw / "Zoro" / "anim.webp", "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    save(frames[1], raw / "Zoro" / "still.webp", "WEBP", lossless=True)
    cfg, _, manifest = run_prepare(make_cfg)
    assert not manifest["skipped"]
    for path in ("Zoro/anim.gif", "Zoro/anim.webp"):
        assert np.abs(pixels_of(cfg, manifest, path).astype(int) - RED).max() <= 2, path
    assert (pixels_of(cfg, manifest, "Zoro/still.webp") == (0, 255, 0)).all()


# --- links and file names: nothing outside paths.raw is read -------------------------------------------------


def test_link_to_an_image_outside_raw_is_skipped(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw)
    secret = save(distinct_image(800), tmp_path / "elsewhere" / "secret.png")
    (raw / "Luffy" / "secret.png").symlink_to(secret)
    cfg, summary, manifest = run_prepare(make_cfg)
    entry = skipped(manifest, "Luffy/secret.png")
    assert "link points outside paths.raw" in entry["reason"] and entry["kind"] == raw_folder.LINK_OUT
    assert "Luffy/secret.png" not in {e["path"] for e in manifest["files"]}
    assert sum(manifest["counts"].values()) == 12 and summary["skipped"] == 1
    assert "; skipped 1 links not followed" in manifests.summary_line(manifest)


def test_link_to_a_folder_outside_raw_is_skipped(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw, classes=CLASSES[:3])
    for i in range(3):
        save(distinct_image(810 + i), tmp_path / "elsewhere" / f"{i}.png")
    (raw / "Nami" / "more").symlink_to(tmp_path / "elsewhere")  # nested in a class folder
    (raw / "Zoro").symlink_to(tmp_path / "elsewhere")  # a whole class folder
    _, summary, manifest = run_prepare(make_cfg)
    for path in ("Nami/more", "Zoro"):
        assert "link points outside paths.raw" in skipped(manifest, path)["reason"]
    assert sum(manifest["counts"].values()) == 9 and summary["skipped"] == 2
    assert all(e["path"].count("/") == 1 for e in manifest["files"])  # nothing from Nami/more/
    assert manifest["warnings"]["empty_classes"] == ["Zoro"]  # the class, not the link, is empty


def test_links_inside_raw_are_followed(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw, classes=CLASSES[:3])
    for i in range(3):
        save(distinct_image(820 + i), raw / "store" / f"{i}.png")
    (raw / "labels.csv").write_text("path,labels\n" + "".join(f"store/{i}.png,Nami\n" for i in range(3)))
    (raw / "Zoro").symlink_to("store")  # the same pictures, also filed under Zoro
    (raw / "Luffy" / "up").symlink_to("..")  # a loop: reported, not walked forever
    linked_raw = tmp_path / "raw_link"
    linked_raw.symlink_to(raw)  # paths.raw itself may be a link
    _, _, manifest = run_prepare(make_cfg, f"paths.raw={linked_raw}")
    labels = {e["path"]: e["labels"] for e in manifest["files"]}
    assert labels["Zoro/0.png"] == ["Nami", "Zoro"]  # store/0.png is its duplicate: labels merged
    assert {e["path"] for e in manifest["duplicates"]} == {f"store/{i}.png" for i in range(3)}
    assert "loop" in skipped(manifest, "Luffy/up")["reason"]
    assert len(manifest["skipped"]) == 1 and sum(manifest["counts"].values()) == 12


def test_a_link_into_another_class_folder_is_named_in_the_summary(make_cfg, raw: Path) -> None:
    """`Nami/uplink -> ../Luffy` relabelled Luffy's images as Luffy+Nami, said only in the manifest (issue 25)."""
    write_dataset(raw)
    (raw / "Nami" / "uplink").symlink_to("../Luffy")
    _, summary, manifest = run_prepare(make_cfg)
    assert manifests.warning_lines(manifest) == [
        "note: 3 relabelled by copies in other class folders (Luffy/ now Luffy+Nami: 3)"
    ]
    assert summary["relabelled"] == 3


def test_the_summary_names_every_relabelling_grouped_by_folder() -> None:
    merged = [{"path": f"Luffy/{i}.png", "labels": ["Luffy", "Nami"]} for i in range(17)]
    merged += [{"path": "Zoro/a/b.png", "labels": ["Sanji", "Zoro"]}]
    assert manifests.relabellings(merged) == "Luffy/ now Luffy+Nami: 17, Zoro/a/ now Sanji+Zoro: 1"
    many = [{"path": f"c{i}/x.png", "labels": ["A", "B"]} for i in range(8)]
    assert manifests.relabellings(many).endswith(", and 2 more groups (manifest: warnings)")


def test_check_raw_refuses_links_out_before_dvc_add_copies_them(raw: Path, tmp_path: Path) -> None:
    """Under `dvc add`, a link to an outside file (a secret) became a copy in .dvc/cache (issue 25)."""
    write_dataset(raw)
    cli = str(Path(sys.executable).parent / "op-classifier")
    done = subprocess.run([cli, "check-raw", str(raw)], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["files"] == 12, done.stderr
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (raw / "Nami" / "notes.png").symlink_to(secret)
    done = subprocess.run([cli, "check-raw", str(raw)], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[0] == f"Nami/notes.png: link points outside paths.raw (to {secret}); not read"
    assert lines[-1].startswith(f"error: {raw}: 1 link(s) lead outside it: `dvc add` would copy")


def test_non_utf8_file_name_is_skipped_and_named(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    bad = raw / "Nami" / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    save(distinct_image(830), bad)
    save(distinct_image(831), raw / os.fsdecode(b"Zor\xf6") / "0.png")
    cfg, summary, manifest = run_prepare(make_cfg)
    for path in ("Nami/caf\\xe9.png", "Zor\\xf6"):
        entry = skipped(manifest, path)
        assert "not valid UTF-8" in entry["reason"] and entry["kind"] == raw_folder.BAD_NAME
    assert sum(manifest["counts"].values()) == 12 and summary["skipped"] == 2
    text = (Path(cfg.paths.prepared) / manifests.MANIFEST).read_bytes().decode("utf-8")
    json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere


def test_labels_file_cannot_reach_outside_raw(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw)
    save(distinct_image(840), tmp_path / "outside.png")
    (raw / "labels.csv").write_text(f"path,labels\n../outside.png,Luffy\n{tmp_path / 'outside.png'},Nami\n")
    _, _, manifest = run_prepare(make_cfg)
    refused = [e for e in manifest["skipped"] if e["kind"] == raw_folder.BAD_LABELS]
    assert [e["line"] for e in refused] == [2, 3]
    assert all("must be relative to paths.raw" in e["reason"] for e in refused)
    assert sum(manifest["counts"].values()) == 12


def test_labels_file_linked_from_outside_is_refused(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw)
    (tmp_path / "labels.csv").write_text("path,labels\nLuffy/000.png,Luffy|Nami\n")
    (raw / "labels.csv").symlink_to(tmp_path / "labels.csv")
    with pytest.raises(DataError, match="links outside paths.raw"):
        run_prepare(make_cfg)


# --- labels ----------------------------------------------------------------------------------------------


def test_labels_file_multi_label_and_bad_lines(make_cfg, raw: Path) -> None:
    write_dataset(raw)
    for i in range(3):
        save(distinct_image(500 + i), raw / "scenes" / f"{i}.png")
    save(distinct_image(600), raw / "scenes" / "unlisted.png")
    (raw / "labels.csv").write_text(
        "path,labels\n"
        "scenes/0.png,Luffy|Zoro\n"
        "scenes/1.png, Nami | Sanji \n"
        "scenes/2.png,Luffy|Chopper\n"  # unknown class
        "scenes/gone.png,Nami\n"  # no such file
        "scenes/0.png,Nami|Zoro,extra\n"  # malformed
        "Luffy/000.png,Luffy|Nami\n",  # overrides the folder label
        encoding="utf-8",
    )
    cfg, summary, manifest = run_prepare(make_cfg)
    labels = {entry["path"]: entry["labels"] for entry in manifest["files"]}
    assert labels["scenes/0.png"] == ["Luffy", "Zoro"]
    assert labels["scenes/1.png"] == ["Nami", "Sanji"]
    assert labels["Luffy/000.png"] == ["Luffy", "Nami"]
    assert "unknown class 'Chopper'" in skipped(manifest, "scenes/2.png")["reason"]
    assert "no such file" in skipped(manifest, "scenes/gone.png")["reason"]
    assert "not a class" in skipped(manifest, "scenes/unlisted.png")["reason"]
    malformed = [e for e in manifest["skipped"] if e.get("line") == 6]
    assert malformed and "expected 2 fields" in malformed[0]["reason"]
    assert sum(manifest["counts"].values()) == 14 and summary["skipped"] == 4
    targets = np.load(Path(cfg.paths.prepared) / "train" / "labels.npy")
    assert targets.dtype == np.float32 and targets.shape[1] == len(CLASSES)


def test_classes_null_infers_sorted_union(make_cfg, raw: Path) -> None:
    write_dataset(raw, classes=["b_folder", "a_folder"])
    for i in range(3):
        save(distinct_image(700 + i), raw / "scenes" / f"{i}.png")
    (raw / "labels.csv").write_text(
        "path,labels\n" + "".join(f"scenes/{i}.png,c_label|a_folder\n" for i in range(3)), encoding="utf-8"
    )
    _, _, manifest = run_prepare(make_cfg, "data.classes=null")
    assert manifest["classes"] == ["a_folder", "b_folder", "c_label"]


def test_empty_class_folder_is_a_warning(make_cfg, raw: Path) -> None:
    write_dataset(raw, classes=CLASSES[:3])
    (raw / "Zoro").mkdir()
    cfg, _, manifest = run_prepare(make_cfg)
    assert manifest["warnings"]["empty_classes"] == ["Zoro"]
    assert manifest["classes"] == CLASSES and sum(manifest["counts"].values()) == 9
    assert not np.load(Path(cfg.paths.prepared) / "train" / "labels.npy")[:, 3].any()


def test_too_few_images_in_a_class_is_an_error(make_cfg, raw: Path) -> None:
    write_dataset(raw, classes=CLASSES[:3])
    write_dataset(raw, per_class=2, classes=["Zoro"], seed=50)
    with pytest.raises(DataError, match="Zoro has 2"):
        run_prepare(make_cfg)


def test_no_usable_image_is_an_error(make_cfg, raw: Path) -> None:
    for name in CLASSES:
        (raw / name).mkdir(parents=True)
        (raw / name / "notes.jpg").write_text(f"about {name}", encoding="utf-8")
    with pytest.raises(DataError, match="no usable image"):
        run_prepare(make_cfg)


# --- duplicates, split, output -----------------------------------------------------------------------------


def test_duplicates_dropped_before_split_with_labels_merged(make_cfg, raw: Path) -> None:
    write_dataset(raw, per_class=4)
    shutil.copy(raw / "Luffy" / "001.png", raw / "Luffy" / "copy.png")
    shutil.copy(raw / "Luffy" / "000.png", raw / "Nami" / "same_picture.png")
    cfg, summary, manifest = run_prepare(make_cfg)
    dropped = {entry["path"]: entry["reason"] for entry in manifest["duplicates"]}
    assert dropped == {
        "Luffy/copy.png": "duplicate of Luffy/001.png",
        "Nami/same_picture.png": "duplicate of Luffy/000.png",
    }
    files = {entry["path"]: entry for entry in manifest["files"]}
    assert files["Luffy/000.png"]["labels"] == ["Luffy", "Nami"]
    merged = manifest["warnings"]["merged_duplicate_labels"]
    assert merged == [{"path": "Luffy/000.png", "labels": ["Luffy", "Nami"]}]
    assert len(files) == 16 and summary["duplicates"] == 2
    assert len({entry["sha256"] for entry in files.values()}) == len(files)
    arrays = [np.load(Path(cfg.paths.prepared) / split / "images.npy") for split in splits.SPLITS]
    rows = [row.tobytes() for images in arrays for row in images]
    assert len(set(rows)) == len(rows)  # no picture in two splits, nor twice in one


def test_split_is_stratified(make_cfg, raw: Path) -> None:
    write_dataset(raw, per_class=20)
    for i in range(40):  # multi-label scenes, all with the same pair
        save(distinct_image(900 + i), raw / "scenes" / f"{i}.png")
    (raw / "labels.csv").write_text("path,labels\n" + "".join(f"scenes/{i}.png,Luffy|Nami\n" for i in range(40)))
    _, _, manifest = run_prepare(make_cfg, "data.val_fraction=0.2", "data.test_fraction=0.1")
    assert manifest["counts"] == {"train": 84, "val": 24, "test": 12}
    for name in ("Sanji", "Zoro"):
        assert [manifest["class_counts"][split][name] for split in splits.SPLITS] == [14, 4, 2]
    assert manifest["multi_label_counts"] == {"train": 28, "val": 8, "test": 4}


def test_every_class_in_every_split_even_when_small(make_cfg, raw: Path) -> None:
    write_dataset(raw, per_class=3)  # round(3 * 0.1) == 0, yet test gets one of each
    _, _, manifest = run_prepare(make_cfg)
    for split in splits.SPLITS:
        assert manifest["class_counts"][split] == dict.fromkeys(CLASSES, 1)
    assert manifest["warnings"]["classes_missing_from_split"] == {}


def test_split_depends_only_on_seed_and_files(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw, per_class=10)

    def split_of(seed: int, name: str) -> dict[str, str]:
        _, _, manifest = run_prepare(make_cfg, f"seed={seed}", f"paths.prepared={tmp_path / name}")
        return {entry["path"]: entry["split"] for entry in manifest["files"]}

    first = split_of(42, "a")
    assert split_of(42, "b") == first
    assert split_of(7, "c") != first


def test_manifest_matches_arrays(make_cfg, raw: Path) -> None:
    write_dataset(raw, per_class=6)
    (raw / "Sanji" / "broken.jpg").write_bytes(b"")
    cfg, summary, manifest = run_prepare(make_cfg)
    prepared = Path(cfg.paths.prepared)
    assert sorted(p.name for p in prepared.iterdir()) == ["manifest.json", "test", "train", "val"]
    for split in splits.SPLITS:
        images = np.load(prepared / split / "images.npy", mmap_mode="r")
        targets = np.load(prepared / split / "labels.npy", mmap_mode="r")
        entries = sorted((e for e in manifest["files"] if e["split"] == split), key=lambda e: e["index"])
        assert isinstance(images, np.memmap) and images.dtype == np.uint8
        assert images.shape == (manifest["counts"][split], SIZE, SIZE, 3) == (len(entries), SIZE, SIZE, 3)
        assert targets.shape == (len(entries), len(CLASSES)) and targets.dtype == np.float32
        assert [e["index"] for e in entries] == list(range(len(entries)))
        for entry in entries:
            assert [CLASSES[i] for i in np.flatnonzero(targets[entry["index"]])] == entry["labels"]
            expected = np.asarray(Image.open(raw / entry["path"]).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
            assert np.array_equal(images[entry["index"]], expected)
        assert manifest["class_counts"][split] == {c: int(targets[:, i].sum()) for i, c in enumerate(CLASSES)}
    assert summary["train"] + summary["val"] + summary["test"] == 24 and summary["images_per_second"] > 0
    assert manifest["image_size"] == SIZE and manifest["seed"] == cfg.seed and manifest["classes"] == CLASSES


def test_failed_run_keeps_previous_output(make_cfg, raw: Path, tmp_path: Path) -> None:
    write_dataset(raw)
    (tmp_path / ".prepared.tmp-999999999-0badc0de").mkdir()  # left by a killed run: cleaned up
    cfg, _, before = run_prepare(make_cfg)
    shutil.rmtree(raw / "Zoro")
    write_dataset(raw, per_class=1, classes=["Zoro"], seed=77)
    with pytest.raises(DataError):
        prepare.run(cfg)
    assert load_manifest(cfg) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]  # no staging folder left


# --- the command line ----------------------------------------------------------------------------------------


def _one_error_line(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr


def test_cli_reports_data_error_in_one_line(raw: Path, tmp_path: Path) -> None:
    write_dataset(raw, per_class=2)
    command = [
        str(Path(sys.executable).parent / "op-classifier"),
        "prepare",
        f"paths.raw={raw}",
        f"paths.prepared={tmp_path / 'prepared'}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    _one_error_line(result.stderr)
    assert "too few images" in result.stderr


def test_dvc_entry_point_reads_params_yaml(raw: Path, tmp_path: Path) -> None:
    write_dataset(raw)
    overrides = (f"paths.raw={raw}", f"paths.prepared={tmp_path / 'prepared'}", f"data.image_size={SIZE}")
    (tmp_path / "params.yaml").write_text(config.to_yaml(config.compose(overrides, conf_dir=REPO / "conf")))
    command = [sys.executable, "-m", "op_classifier.stages.prepare"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prepare: 12 images of 4 classes, split ") and len(result.stdout.splitlines()) == 1
    for name in ("000.png", "001.png"):
        (raw / "Zoro" / name).unlink()
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    _one_error_line(result.stderr)
