"""`op-classifier export --format litert`: float16 and int8 files checked on their own test split, predict on
LiteRT without TensorFlow, the file and its figures in MLflow, and one line for every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from op_classifier.data import sample
from op_classifier.data.prepared import load_split
from op_classifier.serving import export, litert
from op_classifier.stages import evaluate, prepare, train, tune
from tests.conftest import REPO, compose, free_port, paths_under

CLI = str(Path(sys.executable).parent / "op-classifier")
TINY = ("experiment=tiny", "tuner=none", "tracking.champion_target=0")


def _overrides(root: Path, *extra: str) -> list[str]:
    return [*TINY, *paths_under(root), f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *extra]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sample prepared, a resnet trained on it (no search: export never reads one) and registered
    as the champion. The four-stage resnet, not tiny's two: int8 keeps its answers on that one."""
    root = tmp_path_factory.mktemp("export")
    shutil.copytree(REPO / "conf", root / "conf")
    sample.generate(root / "data/raw", per_class=20, scenes=4)
    cfg = compose(*_overrides(root, "model=resnet", "tuner=none"))
    for stage in (prepare, tune, train):
        stage.run(cfg)
    assert evaluate.run(cfg)["champion"]
    return root


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([CLI, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def int8(project: Path) -> tuple[Path, dict]:
    """`op-classifier export --format litert --quantize int8` of the champion, as a user runs it."""
    done = _cli(project, "export", "--format", "litert", "--quantize", "int8", *_overrides(project))
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no converter or interpreter chatter
    summary = json.loads(done.stdout)
    return Path(summary["litert"]), summary


@pytest.fixture(scope="module")
def float32(project: Path) -> Path:
    """`op-classifier export --format litert` of the champion (float32: no calibration), for the refusals."""
    done = _cli(project, "export", "--format", "litert", "--quantize", "none", *_overrides(project))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return Path(json.loads(done.stdout)["litert"])


def _keras_probabilities(root: Path, images: np.ndarray) -> np.ndarray:
    from op_classifier.models.common.saving import load_model

    return np.asarray(load_model(root / "experiments/model/model.keras").predict_on_batch(images))


@pytest.mark.slow
def test_int8_agrees_with_the_keras_model_on_its_test_split(project: Path, int8: tuple[Path, dict]) -> None:
    path, summary = int8
    test = load_split(project / "data/prepared", "test")
    lite = litert.load(path).predict_on_batch(np.asarray(test.images))
    keras_probs = _keras_probabilities(project, np.asarray(test.images, np.float32))
    agreement = float((lite.argmax(1) == keras_probs.argmax(1)).mean())
    assert summary["test_images"] == len(test.images) and summary["agreement"] == pytest.approx(agreement, abs=1e-4)
    assert agreement >= export.AGREEMENT["int8"]
    assert abs(summary["keras_test_accuracy"] - summary["litert_test_accuracy"]) <= export.INT8_ACCURACY_DROP
    assert summary["quantize"] == "int8" and summary["registered_version"] == 1
    assert litert.metadata(path.read_bytes())["classes"] == list(sample.CLASSES)


@pytest.mark.slow
def test_float16_is_half_the_float32_file_and_agrees(project: Path, int8: tuple[Path, dict]) -> None:
    cfg = compose(*_overrides(project))
    sizes = {}
    for quantize in ("none", "float16"):
        summary = export.run(cfg, quantize=quantize)
        assert summary["agreement"] >= export.AGREEMENT[quantize], summary
        sizes[quantize] = summary["bytes"]
    assert 0.4 < sizes["float16"] / sizes["none"] < 0.6 and int8[1]["bytes"] < 0.3 * sizes["none"]


@pytest.mark.slow
def test_the_file_and_its_figures_go_to_mlflow_with_the_version(project: Path, int8: tuple[Path, dict]) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    _, summary = int8
    run = client.get_run(summary["run_id"])
    assert run.data.tags["stage"] == "export" and run.data.metrics["litert_int8_agreement"] == summary["agreement"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "litert")] == ["litert/model-int8.tflite"]
    version = client.get_model_version("op-classifier", "1")
    # Under the champion's training run, as its evaluate run is: the runs table's row of that model.
    assert run.data.tags["mlflow.parentRunId"] == version.run_id
    tags = version.tags
    assert float(tags["litert_int8_agreement"]) == summary["agreement"]
    assert tags["litert_int8_run_id"] == run.info.run_id


@pytest.mark.slow
def test_predict_runs_the_litert_file_without_tensorflow(project: Path, int8: tuple[Path, dict]) -> None:
    path, _ = int8
    probe = (
        "import json, sys\n"
        "from op_classifier import cli\n"
        "try:\n"
        f"    cli.main(['predict', {str(project / 'data/raw/Nami')!r}, '--model', {str(path)!r}, '--json'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document, _, loaded = done.stdout.rpartition("\n[")
    assert "[" + loaded.strip() == "[]"  # neither TensorFlow nor Keras was imported
    results = json.loads(document)
    assert results["classes"] == list(sample.CLASSES) and len(results["results"]) == 20 and not results["errors"]
    first = results["results"][0]
    assert set(first) == {"path", "probabilities", "predicted", "top"}
    from op_classifier.data.images import load_image

    pixels = load_image(Path(first["path"]), 32, 89_478_485)[None].astype(np.float32)
    keras_row = _keras_probabilities(project, pixels)[0]
    np.testing.assert_allclose(list(first["probabilities"].values()), keras_row, atol=0.02)


@pytest.mark.slow
def test_a_folder_holding_one_litert_file_is_a_model(project: Path, int8: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = int8
    folder = tmp_path / "device"
    folder.mkdir()
    shutil.copy(path, folder)
    done = _cli(project, "predict", str(project / "data/raw/Zoro/0000.jpg"), "--model", str(folder), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["model"] == str(folder)
    shutil.copy(path, folder / "other.tflite")
    done = _cli(project, "predict", str(project / "data/raw/Zoro/0000.jpg"), "--model", str(folder))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {folder} holds 2 LiteRT models (model-int8.tflite, other.tflite): name one with --model"
    )


def test_a_file_that_is_not_litert_or_whose_classes_do_not_fit_is_one_line(
    project: Path, float32: Path, tmp_path: Path
) -> None:
    path = float32
    fake = tmp_path / "fake.tflite"
    fake.write_text("not a model")
    wrong = tmp_path / "wrong.tflite"
    wrong.write_bytes(litert.with_metadata(path.read_bytes(), {"classes": ["a", "b", "c"], "image_size": 32}))
    image = str(project / "data/raw/Zoro/0000.jpg")
    for model, message in (
        (fake, f"error: {fake}: not a LiteRT model (no TFL3 flatbuffer)"),
        (wrong, f"error: {wrong}: 4 outputs but 3 class names inside"),
    ):
        done = _cli(project, "predict", image, "--model", str(model))
        assert done.returncode == 2 and done.stderr.strip() == message


def test_a_missing_calibration_split_is_one_line(project: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    shutil.copytree(project / "data/prepared", prepared)
    shutil.rmtree(prepared / "train")
    cfg = compose(*_overrides(project, f"paths.prepared={prepared}", f"paths.export={tmp_path}"))
    with pytest.raises(
        export.ExportError, match=r"export needs the prepared train split: .*train/images.npy not found"
    ):
        export.run(cfg, quantize="int8")
    assert not list(tmp_path.glob("*.tflite"))  # nothing written


def test_a_layer_litert_cannot_run_is_named(project: Path) -> None:
    import keras

    @keras.saving.register_keras_serializable(package="test")
    class Tangent(keras.layers.Layer):
        def call(self, x: object) -> object:
            return keras.ops.tan(x / 255.0)

    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(Tangent(name="odd_tangent")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(hidden))
    with pytest.raises(export.ExportError) as refused:
        export.convert(model, "none")
    assert str(refused.value) == "LiteRT cannot run layer 'odd_tangent' (tf.Tan)"
    assert export.ExportError.exit_code == 2


# --- issue 35: a class list that does not name the outputs, an --out that cannot be written ---

FORGED_CLASSES = {
    # the class list: the reason predict gives (each was printed as if it named the outputs, or a traceback)
    "duplicated": (["Luffy", "Luffy", "Sanji", "Zoro"], "'Luffy' is named twice"),  # 3 printed, an output dropped
    "empty": (["", "", "", ""], "class 0 is empty"),  # ` 53.7% -> (none above 50%)`: one score of four
    "blank": (["Luffy", " ", "Sanji", "Zoro"], "class 1 is empty"),
    "a newline": (["Luffy", "Nami\nZoro 99.9%", "Sanji", "Zoro"], "class 1 ('Nami\\nZoro 99.9%') does not print"),
    "an escape": (["Luffy", "Nami", "\x1b[2J", "Zoro"], "class 2 ('\\x1b[2J') does not print"),
    "integers": ([1, 2, 3, 4], "class 0 is int, not a name"),  # a traceback
    "objects": ([{"name": "Luffy"}, "Nami", "Sanji", "Zoro"], "class 0 is dict, not a name"),  # a traceback
}


@pytest.mark.parametrize("kind", list(FORGED_CLASSES))
def test_a_litert_class_list_must_be_unique_printable_names(
    project: Path, float32: Path, tmp_path: Path, kind: str
) -> None:
    """A .tflite's class list was checked for its length only (issue 35, case 7)."""
    path = float32
    classes, reason = FORGED_CLASSES[kind]
    forged = tmp_path / "forged.tflite"
    forged.write_bytes(litert.with_metadata(path.read_bytes(), {"classes": classes, "image_size": 32}))
    done = _cli(project, "predict", str(project / "data/raw/Zoro/0000.jpg"), "--model", str(forged))
    assert (done.returncode, done.stdout) == (2, ""), done.stdout
    assert done.stderr.strip().splitlines() == [
        f"error: {forged}: its class list does not name the outputs ({reason}): write it again with "
        "`op-classifier export --format litert`"
    ]


def _export_main(capsys: pytest.CaptureFixture, project: Path, out: Path) -> tuple[int, str, str]:
    """`op-classifier export --quantize none --out OUT` in this process: (exit code, stdout, stderr)."""
    from op_classifier import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--quantize", "none", "--out", str(out), *_overrides(project)])
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_an_out_that_cannot_be_written_is_one_line_and_leaves_nothing(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`export --out` under a file, or onto a full disk, was a traceback (issue 35, case 17). Under a file it
    is refused before converting; a full disk (here /dev/full behind the name) once the write fails."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n", encoding="utf-8")
    out = a_file / "model.tflite"
    started = time.monotonic()
    assert _export_main(capsys, project, out) == (2, "", f"error: --out {out}: {a_file} is a file, not a folder\n")
    assert time.monotonic() - started < 5  # no model loaded, nothing converted
    full = tmp_path / "full" / "model.tflite"
    full.parent.mkdir()
    full.symlink_to("/dev/full")
    code, stdout, err = _export_main(capsys, project, full)
    assert (code, stdout) == (1, "")
    assert err.strip().splitlines()[-1] == f"error: --out {full}: cannot write it (No space left on device)"
    assert "Traceback" not in err and [p.name for p in full.parent.iterdir()] == ["model.tflite"]


# --- issue 39: serve on LiteRT ---


def test_serve_runs_the_exported_champion_on_litert_with_the_keras_models_answers(
    project: Path, float32: Path, tmp_path: Path
) -> None:
    """The champion has a float32 LiteRT file (the fixture exported it, with its check): serve runs that file,
    and over HTTP it answers the test split as the Keras model does."""
    from tests.test_serve import _post, _stop, _up

    test = np.asarray(load_split(project / "data/prepared", "test").images, np.float32)
    port, log_path = free_port(), tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [CLI, "serve", "--port", str(port), *_overrides(project)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _up(f"http://127.0.0.1:{port}", process, log_path)
            status, answer = _post(f"http://127.0.0.1:{port}", json.dumps({"instances": test.tolist()}).encode())
        finally:
            _stop(process)
    lines = log_path.read_text().splitlines()
    assert status == 200, answer
    served, expected = np.asarray(answer["predictions"]), _keras_probabilities(project, test)
    assert (served.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(served, expected, atol=1e-4)
    (serving,) = [line for line in lines if line.startswith("serving ")]
    assert "(LiteRT float32, " in serving and not [line for line in lines if line.startswith("note: ")], lines


def test_the_litert_server_never_loads_tensorflow_or_keras(project: Path, float32: Path) -> None:
    """serve's loading path on LiteRT, in a fresh Python: the model answers, TensorFlow and Keras never load."""
    code = f"""
import sys
import numpy as np
from op_classifier import config, tracking
from op_classifier.serving import serve
overrides = {_overrides(project)!r}
store = tracking.open_store(config.load(overrides).tracking)
served = serve.load("models:/op-classifier@champion", store, "auto", "none", False, overrides)
assert served.predict(np.zeros((2, 32, 32, 3))).shape == (2, 4)
print(served.runtime, "tensorflow" in sys.modules, "keras" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(", ")[0] == "LiteRT float32" and done.stdout.strip().endswith("False False"), done.stdout


def test_a_litert_file_that_failed_its_check_is_not_served(project: Path, float32: Path, tmp_path: Path) -> None:
    """A version whose export missed its agreement target: auto serves Keras, saying why; LiteRT by name
    refuses in one line. (The figure is forged low in a copy of the store.)"""
    from op_classifier import tracking
    from op_classifier.serving import runtime

    copy = tmp_path / "mlflow.db"
    shutil.copy(project / "mlflow.db", copy)
    store = tracking.open_store(compose(f"tracking.uri=sqlite:///{copy}").tracking)
    store.set_version_tags(
        "op-classifier", store.alias_version("op-classifier", "champion"), {"litert_none_agreement": 0.5}
    )
    with pytest.raises(runtime.NoLiteRT) as refused:
        runtime.litert_served("models:/op-classifier@champion", store, "none", ())
    assert str(refused.value) == (
        "its LiteRT float32 file agrees with the Keras model on 50.0% of the test split, below 99%"
    )
