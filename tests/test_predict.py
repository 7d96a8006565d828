"""`op-classifier predict`: lines, JSON, the HTML report, bad files, globs, model folders and MLflow URIs."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from op_classifier import cli
from op_classifier.models.common.compile import compile_model
from op_classifier.models.seed_cnn import build_model
from tests.conftest import compose, png_header_only

CLI = str(Path(sys.executable).parent / "op-classifier")
CLASSES = ["Luffy", "Nami", "Sanji", "Zoro"]
GOOD = ["photo.jpg", "tom&jerry.png", "gray.png"]
BAD = {  # name -> (content, the reason its line must give)
    "notes<b>.jpg": (b"just some notes\nabout Luffy\n", "not an image (a text file)"),
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (None, "truncated"),
    "bomb.png": (None, "too large"),
}


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    """A random RGB picture of size (width, height)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_good(folder: Path) -> None:
    """A JPEG, an RGBA PNG with a name to escape, and a grayscale PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    noise((64, 48), 1).save(folder / GOOD[0], quality=90)
    noise((40, 40), 2).convert("RGBA").save(folder / GOOD[1])
    noise((50, 30), 3).convert("L").save(folder / GOOD[2])


def write_bad(folder: Path) -> None:
    """The four files predict must refuse, each for its own reason."""
    buffer = io.BytesIO()
    noise((64, 64), 4).save(buffer, "JPEG", quality=95)
    contents = {
        **{name: data for name, (data, _) in BAD.items()},
        "truncated.jpg": buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10],
        "bomb.png": png_header_only(100_000, 100_000),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 4-class model saved as the train stage lays out its folder."""
    out = tmp_path_factory.mktemp("model")
    model = compile_model(
        build_model(num_classes=4, image_size=32, filters=(4, 8), units=8, resize=None, seed=1), 1e-3, CLASSES
    )
    # Spread the untrained head's outputs away from 0.5, so thresholds select different classes.
    head = model.get_layer("probabilities")
    rng = np.random.default_rng(0)
    head.set_weights([rng.normal(0, 2, w.shape).astype("float32") for w in head.get_weights()])
    model.save(out / "model.keras")
    (out / "run.json").write_text(json.dumps({"classes": CLASSES, "image_size": 32}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/ holds only images; mixed/ the same images, four bad files and a hidden one; annotated/ the
    images, one named in capitals, beside files that are no images by name (labels.csv, notes.txt)."""
    root = tmp_path_factory.mktemp("images")
    write_good(root / "good")
    write_good(root / "mixed")
    write_bad(root / "mixed")
    (root / "mixed" / ".hidden.jpg").write_bytes(b"not seen")
    write_good(root / "annotated")
    (root / "annotated" / "photo.jpg").rename(root / "annotated" / "PHOTO.JPG")
    (root / "annotated" / "labels.csv").write_text("path,labels\nPHOTO.JPG,Luffy\n", encoding="utf-8")
    (root / "annotated" / "notes.txt").write_text("just some notes\n", encoding="utf-8")
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`op-classifier predict ARGS` as a user runs it (no verbosity or TensorFlow log level of the caller's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OP_CLASSIFIER_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([CLI, "predict", *args], capture_output=True, text=True, env=env)


def main_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """cli.main in this process (Keras loaded once for all tests): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        cli.main(["predict", *args])
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_bad_files_get_their_own_error_lines_and_exit_1(model_dir: Path, images: Path) -> None:
    mixed = images / "mixed"
    done = run_cli(str(mixed), str(images / "nothing*.jpg"), "--model", str(model_dir))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    names = sorted(GOOD + list(BAD))
    expected = [str(mixed / name) for name in names] + [str(images / "nothing*.jpg")]
    assert [line.split(": ", 1)[0] for line in lines] == expected
    for name, (_, reason) in BAD.items():
        assert any(line.startswith(f"{mixed / name}: error: ") and reason in line for line in lines), name
    assert lines[-1].endswith(": error: no file matches this pattern")
    score = r"\d+\.\d%"
    good = re.compile(rf"^.+: Luffy {score} \| Nami {score} \| Sanji {score} \| Zoro {score}  -> .+$")
    assert sum(bool(good.match(line)) for line in lines) == len(GOOD)
    # Nothing but our own line: TensorFlow's start-up lines (absl, cudart_stub, cuInit, ...) are off by default.
    assert done.stderr.strip().splitlines() == ["error: 5 of 8 inputs could not be predicted (see their lines)"]


def test_all_good_with_a_glob_exits_0(model_dir: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = main_in_process(
        capsys, str(images / "good" / "*.png"), str(images / "**" / "photo.jpg"), "--model", str(model_dir)
    )
    assert code == 0
    paths = [line.split(": ", 1)[0] for line in out.splitlines()]
    assert paths == [str(images / "good" / n) for n in ("gray.png", "tom&jerry.png")] + [
        str(images / "good" / "photo.jpg"),
        str(images / "mixed" / "photo.jpg"),
    ]


def test_a_folder_or_pattern_skips_files_not_named_as_images(
    model_dir: Path, images: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = images / "annotated"
    code, out, err = main_in_process(capsys, str(folder), str(folder / "*"), "--model", str(model_dir))
    assert code == 0, err
    assert [line.split(": ", 1)[0] for line in out.splitlines()] == [
        str(folder / name) for name in ("PHOTO.JPG", "gray.png", "tom&jerry.png")
    ]
    assert "error" not in out + err
    assert err.strip().splitlines() == [
        f"note: skipped 2 non-image files by name ({folder / 'labels.csv'}, {folder / 'notes.txt'})"
    ]


def test_a_file_named_on_its_own_is_tried_whatever_its_name(
    model_dir: Path, images: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = images / "annotated"
    code, out, err = main_in_process(capsys, str(folder), str(folder / "notes.txt"), "--model", str(model_dir))
    assert code == 1
    assert out.splitlines()[-1] == f"{folder / 'notes.txt'}: error: not an image (a text file)"
    assert err.strip().splitlines() == [
        f"note: skipped 1 non-image file by name ({folder / 'labels.csv'})",
        "error: 1 of 4 inputs could not be predicted (see their lines)",
    ]


def test_a_folder_or_pattern_with_no_image_names_is_an_error_line(
    model_dir: Path, images: Path, capsys: pytest.CaptureFixture
) -> None:
    pattern = str(images / "annotated" / "*.csv")
    code, out, _ = main_in_process(capsys, pattern, str(images / "good"), "--model", str(model_dir))
    assert code == 1
    assert f"{pattern}: error: no image file matches this pattern (1 skipped: not named as image)" in out.splitlines()


def test_image_suffixes_cover_every_format_predict_decodes() -> None:
    from PIL import Image

    from op_classifier.data import images as image_module
    from op_classifier.serving.predict import IMAGE_SUFFIXES

    Image.init()
    decoded = set(image_module._formats())
    assert {ext for ext, fmt in Image.registered_extensions().items() if fmt in decoded} <= IMAGE_SUFFIXES
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"} <= IMAGE_SUFFIXES


@pytest.mark.slow
def test_verbose_shows_tensorflows_start_up_lines(model_dir: Path, images: Path) -> None:
    """The quiet default is checked by every other run_cli test; --verbose brings the lines back."""
    done = run_cli(str(images / "good" / "photo.jpg"), "--model", str(model_dir), "--verbose")
    assert done.returncode == 0, done.stderr
    # Measured without a GPU: absl's pre-init warning, cudart_stub, cpu_feature_guard, cuInit; a GPU
    # machine prints other lines, but absl's warning comes before the first of them in every case.
    assert "WARNING: All log messages before absl::InitializeLog() is called" in done.stderr, done.stderr


def test_json_schema_and_threshold(model_dir: Path, images: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = main_in_process(
        capsys, str(images / "mixed"), "--model", str(model_dir), "--json", "--threshold", "0.45", "--batch-size", "2"
    )
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {"model", "threshold", "classes", "results", "errors"}
    assert doc["model"] == str(model_dir) and doc["threshold"] == 0.45 and doc["classes"] == CLASSES
    assert sorted(Path(r["path"]).name for r in doc["results"]) == sorted(GOOD)
    assert sorted(Path(e["path"]).name for e in doc["errors"]) == sorted(BAD)
    for result in doc["results"]:
        assert set(result) == {"path", "probabilities", "predicted", "top"}
        probs = result["probabilities"]
        assert list(probs) == CLASSES and all(0.0 <= p <= 1.0 for p in probs.values())
        assert result["predicted"] == [c for c in CLASSES if probs[c] >= 0.45]
        assert result["top"] == max(probs, key=probs.get)
    assert all(e["error"] for e in doc["errors"])


def test_report_is_self_contained_html_naming_every_file(
    model_dir: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "out" / "report.html"
    code, out, _ = main_in_process(capsys, str(images / "mixed"), "--model", str(model_dir), "--report", str(report))
    assert code == 1 and len(out.splitlines()) == len(GOOD) + len(BAD)
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for name in [
        "photo.jpg",
        "tom&amp;jerry.png",
        "gray.png",
        "notes&lt;b&gt;.jpg",
        "empty.jpg",
        "truncated.jpg",
        "bomb.png",
    ]:
        assert f">{name}</h2>" in page, name
    assert "notes<b>" not in page and ".hidden.jpg" not in page
    assert page.count("data:image/jpeg;base64,") == len(GOOD)
    assert page.count('class="card failed"') == len(BAD)
    assert not re.search(r"<script|<link|src=\"http|url\(http|@import", page)


def test_missing_model_is_one_line_naming_the_stage(images: Path, tmp_path: Path) -> None:
    done = run_cli(str(images / "good"), "--model", str(tmp_path / "nope"))
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope' / 'model.keras'} not found: train a model first "
        "(`dvc repro train`, or `make run` for the whole pipeline)"
    ]


def test_bad_threshold_is_a_usage_error(images: Path, model_dir: Path) -> None:
    done = run_cli(str(images / "good"), "--model", str(model_dir), "--threshold", "50")
    assert done.returncode == 2 and done.stderr.strip() == "error: --threshold: must be between 0 and 1, got 50.0"


def test_champion_from_the_mlflow_registry(
    model_dir: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """models:/op-classifier@champion from the project's store (its mlflow.db, found from the cwd)."""
    import keras

    from op_classifier.tracking import flatten
    from op_classifier.tracking.runs import MlflowTracker

    monkeypatch.chdir(tmp_path)
    tracker = MlflowTracker(compose(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}").tracking)
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    with tracker.run("train"):
        tracker.log_params(flatten({"data": {"classes": CLASSES}}))
        uri = tracker.log_model(model, np.zeros((1, 32, 32, 3), dtype="float32"))
    assert tracker.register(uri, score=0.5, target=0.0, metric="val_accuracy")["champion"]

    good = str(images / "good")
    code, out, err = main_in_process(capsys, good, "--model", "models:/op-classifier@champion", "--json")
    assert code == 0, err
    from_registry = json.loads(out)
    _, out, _ = main_in_process(capsys, good, "--model", str(model_dir), "--json")
    from_folder = json.loads(out)
    assert from_registry["classes"] == CLASSES and from_registry["model"] == "models:/op-classifier@champion"
    assert [r["path"] for r in from_registry["results"]] == [r["path"] for r in from_folder["results"]]
    for a, b in zip(from_registry["results"], from_folder["results"]):
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)

    code, _, err = main_in_process(capsys, good, "--model", "models:/op-classifier@nobody")
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: cannot fetch models:/op-classifier@nobody")


def test_a_fifo_among_the_inputs_is_its_own_error_line(
    model_dir: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A FIFO hung predict before it printed anything, even for the good images (issue 25)."""
    folder = tmp_path / "with-pipe"
    write_good(folder)
    os.mkfifo(folder / "pipe.jpg")
    code, out, _ = main_in_process(capsys, str(folder), "--model", str(model_dir))
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 4
    assert f"{folder / 'pipe.jpg'}: error: not a regular file (a FIFO); not read" in lines
    assert sum(" -> " in line for line in lines) == 3  # the good images are predicted


# --- issue 35: a NaN model, names that would forge lines, a report that cannot be written ---


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """model_dir's model whose head went NaN (as a diverged training leaves it)."""
    import keras

    out = tmp_path_factory.mktemp("nan-model")
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    head = model.get_layer("probabilities")
    head.set_weights([np.full(w.shape, np.nan, "float32") for w in head.get_weights()])
    model.save(out / "model.keras")
    (out / "run.json").write_text((model_dir / "run.json").read_text(encoding="utf-8"), encoding="utf-8")
    return out


def test_a_model_answering_nan_is_one_error_line_not_a_prediction(
    nan_model_dir: Path, images: Path, capsys: pytest.CaptureFixture
) -> None:
    """`Luffy nan% | Nami nan% ... -> (none above 50%)`, exit 0, was printed as if it were an answer (issue 35,
    case 4)."""
    good = images / "good"
    for extra in ((), ("--json",)):
        code, out, err = main_in_process(capsys, str(good), "--model", str(nan_model_dir), *extra)
        assert code == 1 and out == "", out
        assert err.strip().splitlines() == [
            f"error: {nan_model_dir}: the model answers NaN or infinity for {good / 'gray.png'}, not probabilities: "
            "it is broken (train it again)"
        ]


def test_names_holding_control_characters_cannot_forge_lines(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A file name holding a newline printed a line of its own, one that can read as another file's
    prediction; a terminal's escape sequences ran (issue 35, case 7). They are shown escaped, as Python
    writes them in a string; a name that is no UTF-8 shows its bytes as \\xff."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    forged = "a\nb.png: Luffy 99.9% | Nami 0.1% | Sanji 0.1% | Zoro 0.1%  -> Luffy.png"
    noise((40, 40), 5).save(folder / forged)
    noise((40, 40), 6).save(folder / "\x1b[2Jcleared.png")
    noise((40, 40), 7).save(os.path.join(os.fsencode(folder), b"\xff.png"), "PNG")
    (folder / "bad\r\nname.jpg").write_bytes(b"just some text\n")
    (folder / "notes\n.txt").write_text("not an image by name\n", encoding="utf-8")
    report = tmp_path / "report.html"
    code, out, err = main_in_process(capsys, str(folder), "--model", str(model_dir), "--report", str(report))
    lines = out.splitlines()
    assert code == 1 and len(lines) == 4, lines
    assert sorted(line.split(": ", 1)[0] for line in lines) == sorted(
        f"{folder}/{name}" for name in ("\\x1b[2Jcleared.png", "\\xff.png", "a\\nb.png", "bad\\r\\nname.jpg")
    )
    assert f"{folder}/a\\nb.png: Luffy 99.9% | Nami 0.1% | Sanji 0.1% | Zoro 0.1%  -> Luffy.png: Luffy " in out
    assert f"{folder}/bad\\r\\nname.jpg: error: not an image (a text file)" in lines
    assert "\x1b" not in out + err
    assert err.strip().splitlines() == [
        f"note: skipped 1 non-image file by name ({folder}/notes\\n.txt)",
        "error: 1 of 4 inputs could not be predicted (see their lines)",
    ]
    page = report.read_text(encoding="utf-8")
    assert ">a\\nb.png: Luffy 99.9% | Nami 0.1% | Sanji 0.1% | Zoro 0.1%  -&gt; Luffy.png</h2>" in page
    assert ">\\x1b[2Jcleared.png</h2>" in page and "\x1b" not in page


def test_a_report_that_cannot_be_written_is_one_line(
    model_dir: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--report under a file, to a folder or to a full disk was a traceback, the last after the predictions
    had printed (issue 35, case 17). The first two are refused before any image is read."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n", encoding="utf-8")
    good = str(images / "good")
    for report, reason in (
        (a_file / "report.html", f"{a_file} is a file, not a folder"),
        (tmp_path, "a folder: name the file to write"),
    ):
        code, out, err = main_in_process(capsys, good, "--model", str(model_dir), "--report", str(report))
        assert (code, out) == (2, "") and err.strip().splitlines() == [f"error: --report {report}: {reason}"]
    code, out, err = main_in_process(capsys, good, "--model", str(model_dir), "--report", "/dev/full")
    assert code == 1 and len(out.splitlines()) == len(GOOD)  # the predictions stand
    assert err.strip().splitlines() == ["error: --report /dev/full: cannot write it (No space left on device)"]


def _files_of_at_most(size: int) -> None:
    """In a child process: a write past size bytes fails (EFBIG) where a full disk fails (ENOSPC)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the writer
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_a_report_cut_short_leaves_no_file_behind(model_dir: Path, images: Path, tmp_path: Path) -> None:
    """A write that fails halfway (a full disk; here a file size limit) left half a page (issue 35, case 17)."""
    folder = tmp_path / "out"
    folder.mkdir()
    report = folder / "report.html"
    env = {k: v for k, v in os.environ.items() if k not in ("OP_CLASSIFIER_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run(
        [CLI, "predict", str(images / "good"), "--model", str(model_dir), "--report", str(report)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=lambda: _files_of_at_most(4096),
    )
    assert done.returncode == 1 and len(done.stdout.splitlines()) == len(GOOD), done.stderr
    assert done.stderr.strip().splitlines() == [f"error: --report {report}: cannot write it (File too large)"]
    assert list(folder.iterdir()) == []
