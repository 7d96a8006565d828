"""The built-in synthetic sample: layout, decodable files, labels, determinism, refusals, CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from op_classifier.data import sample
from op_classifier.errors import DataError

PER_CLASS, SCENES = 3, 2
CLI = Path(sys.executable).parent / "op-classifier"


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One small sample rendered by a pool of two workers, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("sample") / "raw"
    return out, sample.generate(out, per_class=PER_CLASS, scenes=SCENES, workers=2)


def _labels(out: Path) -> list[dict[str, str]]:
    with open(out / sample.LABELS_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_layout_and_counts(made: tuple[Path, dict]) -> None:
    out, summary = made
    assert sorted(p.name for p in out.iterdir()) == sorted([*sample.CLASSES, "scenes", "labels.csv"])
    for name in sample.CLASSES:
        assert sorted(p.name for p in (out / name).iterdir()) == [f"{i:04d}.jpg" for i in range(PER_CLASS)]
    assert len(list((out / "scenes").iterdir())) == SCENES
    assert (out / "labels.csv").read_text(encoding="utf-8").splitlines()[0] == "path,labels"
    assert summary["images"] == 4 * PER_CLASS + SCENES
    assert summary["per_class"] == PER_CLASS and summary["scenes"] == SCENES
    assert summary["seconds_per_1000"] > 0


def test_every_file_is_a_plain_180px_rgb_jpeg(made: tuple[Path, dict]) -> None:
    out, _ = made
    for path in out.rglob("*.jpg"):
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (sample.SIZE, sample.SIZE)), path
            assert "exif" not in img.info and not img.getexif(), path
            img.load()  # decodes the whole file, not just the header


def test_labels_name_existing_scenes_with_two_or_three_classes(made: tuple[Path, dict]) -> None:
    out, _ = made
    rows = _labels(out)
    assert [row["path"] for row in rows] == [f"scenes/{i:04d}.jpg" for i in range(SCENES)]
    for row in rows:
        assert (out / row["path"]).is_file()
        names = row["labels"].split("|")
        assert 2 <= len(names) <= 3 and len(set(names)) == len(names)
        assert names == sorted(names, key=sample.CLASSES.index)  # known classes, in class order


def test_regeneration_is_byte_identical_whatever_the_worker_count(made: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = made
    again = tmp_path / "again"
    sample.generate(again, per_class=PER_CLASS, scenes=SCENES, workers=1)
    assert _files(again) == _files(out)


def test_another_seed_gives_other_images(made: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = made
    other = tmp_path / "other"
    sample.generate(other, per_class=1, scenes=1, seed=sample.SEED + 1, workers=1)
    for rel, data in _files(other).items():
        if rel.endswith(".jpg"):
            assert data != (out / rel).read_bytes(), rel


def test_an_existing_empty_folder_is_filled(tmp_path: Path) -> None:
    tmp_path.joinpath("empty").mkdir()
    sample.generate(tmp_path / "empty", per_class=1, scenes=0, workers=1)
    assert len(list((tmp_path / "empty").rglob("*.jpg"))) == len(sample.CLASSES)
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temp folder left behind


def test_refuses_a_non_empty_folder_and_leaves_it_untouched(tmp_path: Path) -> None:
    precious = tmp_path / "raw" / "mine.jpg"
    precious.parent.mkdir()
    precious.write_bytes(b"user data")
    with pytest.raises(DataError, match="not empty"):
        sample.generate(tmp_path / "raw", per_class=1, scenes=0, workers=1)
    assert _files(tmp_path) == {"raw/mine.jpg": b"user data"}


def test_an_unwritable_place_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot write"):
        sample.generate(tmp_path / "file" / "raw", per_class=1, scenes=0, workers=1)


@pytest.mark.parametrize(("per_class", "scenes"), [(0, 1), (-2, None), (1, -1)])
def test_refuses_bad_counts(tmp_path: Path, per_class: int, scenes: int | None) -> None:
    with pytest.raises(DataError):
        sample.generate(tmp_path / "raw", per_class=per_class, scenes=scenes, workers=1)
    assert not (tmp_path / "raw").exists()


def test_cli_renders_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    command = [str(CLI), "sample", "--out", str(out), "--per-class", "2", "--scenes", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(list(out.rglob("*.jpg"))) == 4 * 2 + 1
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0
    assert again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert "Traceback" not in again.stderr
