"""Caches that cannot lie: features follow the pixels, damaged or forged entries are discarded, and a
training gives the same weights whatever the cache holds (issue 35, cases 1, 2, 5 and 16)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from op_classifier.data.prepared import data_hash
from op_classifier.stages import train, tune
from op_classifier.training import features
from tests.conftest import DATA, paths_under, tiny_cfg

LITE = ("model=efficientnet_lite0", "model.resize=32", "train.warmup_epochs=0", "tuner=none", "tracking=none")


@pytest.fixture(scope="module")
def project(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny prepared project: these tests change its pixels."""
    root = tmp_path_factory.mktemp("caches")
    shutil.copytree(tiny_project, root, dirs_exist_ok=True)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own."""
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def lite0(project: Path):  # keras stays out of the module's imports: no return annotation
    """A lite0 model at 32 pixels, built once (its backbone's features are what the cache keeps)."""
    from op_classifier.models import get

    return get("efficientnet_lite").build(4, 32, seed=0, resize=32)


def _entry(cache: Path, split: str = "train") -> Path:
    (entry,) = (cache / "features").glob(f"*-{split}.npz")
    return entry


@pytest.mark.slow
def test_a_training_gives_the_same_weights_with_an_empty_cache_and_a_warm_one(
    project: Path, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 2: same seed, same config: the first run on a fresh machine is the run anyone reproduces."""
    cfg = tiny_cfg(
        project,
        *LITE,
        "train.epochs=2",
        "train.fine_tune_epochs=1",
        "train.fine_tune_layers=4",
        *paths_under(tmp_path, skip=DATA),
    )
    runs = []
    for _ in ("cold", "warm"):
        shutil.rmtree(cfg.paths.checkpoints, ignore_errors=True)
        tune.run(cfg)
        runs.append(train.run(cfg)["weights_sha256"])
    assert runs[0] == runs[1]
    assert [path.name for path in cache.iterdir()] == ["features"]  # the weights are read, not cached
    assert "discarding" not in capsys.readouterr().err


def test_features_follow_the_pixels_not_the_file_list(project: Path, cache: Path, lite0) -> None:
    """Case 1: pixels changed in place under the same manifest are other data: new features, computed."""
    prepared = project / "data/prepared"
    before = data_hash(prepared)
    first, _ = features.compute_all(lite0, prepared, 8)
    images = np.load(prepared / "train/images.npy", mmap_mode="r+")
    kept = np.array(images)
    try:
        images[:] = 0
        images.flush()
        assert data_hash(prepared) != before
        again, _ = features.compute_all(lite0, prepared, 8)
        assert len(list((cache / "features").glob("*-train.npz"))) == 2
        np.testing.assert_array_equal(again.x, np.repeat(again.x[:1], len(again.x), axis=0))  # all black
        assert not np.allclose(again.x, first.x)
    finally:
        images[:] = kept
        images.flush()
    assert data_hash(prepared) == before


def _rewrite(entry: Path, change) -> None:  # change: a function of the arrays, the entry re-signed after it
    with np.load(entry) as kept:
        arrays = {name: np.array(kept[name]) for name in features.ARRAYS}
    change(arrays)
    np.savez(entry, **arrays, **{features.DIGEST: np.array(features._digest(arrays))})


def _shuffled(arrays: dict) -> None:
    arrays["x"] = arrays["x"][::-1].copy()


def _nan(arrays: dict) -> None:
    arrays["x"][0, 0] = np.nan


def _random_backbone(arrays: dict) -> None:
    arrays["x"] = np.random.default_rng(0).random(arrays["x"].shape, dtype="float32")


def _short(arrays: dict) -> None:
    arrays["x"], arrays["y"] = arrays["x"][:-1], arrays["y"][:-1]


def _narrow(arrays: dict) -> None:
    arrays["x"] = arrays["x"][:, :-1].copy()


def _relabelled(arrays: dict) -> None:
    arrays["y"] = np.roll(arrays["y"], 1, axis=1)


def _truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def _flip_a_bit(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[len(data) // 3] ^= 0x10
    entry.write_bytes(bytes(data))


def _folder(entry: Path) -> None:
    entry.unlink()
    (entry / "inside").mkdir(parents=True)


def _object_array(entry: Path) -> None:
    with np.load(entry) as kept:
        arrays = {name: kept[name] for name in kept.files}
    arrays["x"] = np.array([object()] * 3, dtype=object)
    np.savez(entry, **arrays)


def _missing_key(entry: Path) -> None:
    with np.load(entry) as kept:
        arrays = {name: kept[name] for name in kept.files if name != "y"}
    np.savez(entry, **arrays)


def _unsigned_change(entry: Path) -> None:
    with np.load(entry) as kept:
        arrays = {name: np.array(kept[name]) for name in kept.files}
    arrays["x"] = arrays["x"][::-1].copy()
    np.savez(entry, **arrays)


DAMAGE = {  # case 16: damaged; case 5: forged by someone with write access, digest and all
    "truncated": (_truncate, "discarding"),
    "a flipped bit": (_flip_a_bit, "discarding"),
    "a folder in its place": (_folder, "not kept in the cache"),
    "an object array": (_object_array, "discarding"),
    "a missing array": (_missing_key, "no array 'y'"),
    "rows changed, digest not": (_unsigned_change, "does not match its digest"),
    "rows shuffled, re-signed": (lambda e: _rewrite(e, _shuffled), "not this backbone's"),
    "another backbone's features": (lambda e: _rewrite(e, _random_backbone), "not this backbone's"),
    "a NaN, re-signed": (lambda e: _rewrite(e, _nan), "not all finite"),
    "rows short": (lambda e: _rewrite(e, _short), "shape"),
    "columns wrong": (lambda e: _rewrite(e, _narrow), "shape"),
    "other labels": (lambda e: _rewrite(e, _relabelled), "labels"),
}


@pytest.fixture(scope="module")
def pristine(project: Path, lite0, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    """The whole entries of the tiny project's train and val features, made once, and the features in them."""
    folder = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(features.CACHE_ENV, str(folder))
        made = features.compute_all(lite0, project / "data/prepared", 8)
    return folder, made


# Each case computes the features again: one of each kind in the default suite, the rest `slow`.
QUICK_DAMAGE = ("truncated", "a folder in its place", "rows shuffled, re-signed", "a NaN, re-signed")


@pytest.mark.parametrize(
    "damage",
    [damage if damage in QUICK_DAMAGE else pytest.param(damage, marks=pytest.mark.slow) for damage in DAMAGE],
    ids=list(DAMAGE),
)
def test_a_damaged_or_forged_entry_is_discarded_with_a_note_and_computed_again(
    damage: str, project: Path, cache: Path, lite0, pristine, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, made = pristine
    shutil.copytree(kept / "features", cache / "features")
    whole, entry = _entry(kept), _entry(cache)
    spoil, said = DAMAGE[damage]
    spoil(entry)
    again = features.compute_all(lite0, project / "data/prepared", 8)
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1 and err.startswith("note: ")
    for fresh, kept in zip(again, made):
        np.testing.assert_array_equal(fresh.x, kept.x)
    assert entry.is_dir() or entry.read_bytes() == whole.read_bytes()  # kept again, whole


def test_a_whole_entry_is_read_in_silence_and_computes_nothing(
    project: Path, cache: Path, lite0, pristine, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    kept, made = pristine
    shutil.copytree(kept / "features", cache / "features")
    monkeypatch.setattr(features, "compute", lambda *args: pytest.fail("computed again"))
    for read, kept in zip(features.compute_all(lite0, project / "data/prepared", 8), made):
        np.testing.assert_array_equal(read.x, kept.x)
    assert capsys.readouterr().err == ""


def _unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-rm", "true"]).returncode == 0


READ = """
import sys
from pathlib import Path
from op_classifier.models import get
from op_classifier.training import features
model = get("efficientnet_lite").build(4, 32, seed=0, resize=32)
train, val = features.compute_all(model, Path(sys.argv[1]), 8)
print(len(train.x), len(val.x))
"""


@pytest.mark.skipif(
    not _unshare_works(), reason="needs `unshare -rm` (a user and mount namespace) for a read-only mount"
)
@pytest.mark.slow
def test_a_read_only_cache_is_read_and_an_unusable_one_is_a_note(project: Path, cache: Path, lite0, tmp_path) -> None:
    """Case 16: a read-only cache holding a valid entry serves it; a cache that is a file costs a note."""
    prepared = project / "data/prepared"
    features.compute_all(lite0, prepared, 8)
    entry = _entry(cache)
    when = entry.stat().st_mtime_ns
    script = f"mount -o bind,ro {cache} {cache} && exec {sys.executable} -c '{READ}' {prepared}"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "note:" not in done.stderr and "Traceback" not in done.stderr
    assert entry.stat().st_mtime_ns == when
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    env = {**os.environ, "OP_CLASSIFIER_CACHE": str(not_a_folder)}
    done = subprocess.run([sys.executable, "-c", READ, str(prepared)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("note: ")] == [
        f"note: the features are not kept in the cache {not_a_folder}/features ([Errno 20] Not a directory: "
        f"'{not_a_folder}/features')"
    ]
