"""Backend-agnostic in fact: under KERAS_BACKEND=jax the stages run, log to MLflow and never import TensorFlow.

Each check runs in a fresh Python (the backend is fixed when Keras is first imported) and ends by
asserting that `tensorflow` is not in sys.modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("jax")  # the test extra installs it; a bare install has only TensorFlow

NO_TENSORFLOW = """
import sys
assert "tensorflow" not in sys.modules, "tensorflow was imported under KERAS_BACKEND=jax"
print("NO_TENSORFLOW")
"""


def _run_under_jax(code: str, cwd: Path, tensorflow_free: bool = True) -> str:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + (NO_TENSORFLOW if tensorflow_free else "")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NO_TENSORFLOW" in done.stdout or not tensorflow_free
    return done.stdout


@pytest.mark.slow
def test_stages_import_seed_stream_and_train_under_jax_without_tensorflow(tmp_path: Path) -> None:
    """The fast smoke: every stage module imports, seeding and one streamed epoch work, requirements name jax."""
    out = _run_under_jax(
        f"""
        import json
        from pathlib import Path
        import keras
        import numpy as np
        from op_classifier.serving import predict
        from op_classifier.stages import evaluate, prepare, train, tune
        from op_classifier.training.backend import set_random_seed
        from op_classifier.models.common.compile import compile_model
        from op_classifier.models.seed_cnn import build_model
        from op_classifier.data.stream import ImageStream
        from op_classifier.tracking.runs import pip_requirements

        assert keras.backend.backend() == "jax"
        set_random_seed(1)
        path = Path({str(tmp_path)!r}) / "images.npy"
        np.save(path, np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
        labels = np.eye(2, dtype=np.float32)[np.arange(12) % 2]
        model = compile_model(build_model(2, 16, filters=(4,), units=8, seed=1), 1e-3, ["a", "b"])
        model.fit(ImageStream(path, labels, batch_size=4, seed=1), epochs=1, shuffle=False, verbose=0)
        assert model.jit_compile, "augmentation turned jit off: fit runs op by op, 2-3x slower"
        probs = model.predict(ImageStream(path, None, batch_size=5), verbose=0)
        assert probs.shape == (12, 2)
        print(json.dumps(pip_requirements()))
        """,
        tmp_path,
    )
    requirements = json.loads(out.splitlines()[-2])
    assert any(r.startswith("jax==") for r in requirements)
    assert not any(r.startswith("tensorflow") for r in requirements)


def _command_under_jax(args: list[str], cwd: Path) -> str:
    """One `op-classifier` command in a fresh Python under JAX, as DVC runs a stage; TensorFlow never loaded."""
    return _run_under_jax(
        f"""
        import sys
        from op_classifier.cli import main
        try:
            main({args!r})
        except SystemExit as done:
            assert done.code in (0, None), f"exit {{done.code}}"
        """,
        cwd,
    )


def test_the_tiny_pipeline_runs_and_logs_under_jax_each_stage_in_its_own_process(tmp_path: Path) -> None:
    """prepare, a Keras Tuner search, train, evaluate (MLflow on SQLite) and predict under JAX, each its
    own process as under `dvc repro`: evaluate and predict load train's file with nothing built first.

    In the default suite so that CI runs the pipeline under JAX as well as TensorFlow."""
    import mlflow

    from op_classifier.data import sample

    subprocess.run(["cp", "-r", str(REPO / "conf"), str(tmp_path / "conf")], check=True)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["experiment=tiny", "tuner.max_trials=1", f"tracking.uri={store}"]
    sample.generate(tmp_path / "data/raw", per_class=8, scenes=4)
    for stage in ("prepare", "tune", "train", "evaluate"):
        _command_under_jax([stage, *overrides], tmp_path)
    out = _command_under_jax(["predict", "data/raw/Luffy", "--model", "experiments/model", "--json"], tmp_path)
    predicted = json.loads(out[: out.rindex("NO_TENSORFLOW")])["results"]
    assert len(predicted) == 8 and all(result["top"] in ("Luffy", "Nami", "Sanji", "Zoro") for result in predicted)
    metrics = json.loads((tmp_path / "experiments/metrics.json").read_text())
    record = json.loads((tmp_path / "experiments/model/run.json").read_text())
    assert not (tmp_path / "experiments/model/saved_model").exists()  # needs TensorFlow: skipped with a note
    client = mlflow.MlflowClient(store)
    run = client.get_run(record["run_id"])
    assert run.data.params["precision_policy"] == "float32"  # train.mixed_precision=auto on a CPU
    assert run.data.metrics["val_accuracy"] == metrics["val_accuracy"]
    trials = client.search_runs([run.info.experiment_id], "tags.`mlflow.runName` LIKE 'trial%'")
    assert len(trials) == 1
    (model,) = client.search_logged_models([run.info.experiment_id])
    logged = Path(model.artifact_location.removeprefix("file://"))  # the SQLite store keeps artifacts on disk
    requirements = (logged / "requirements.txt").read_text()
    assert "jax==" in requirements and "tensorflow" not in requirements


@pytest.mark.slow
def test_efficientnet_lite_imagenet_weights_load_and_answer_under_jax(tmp_path: Path) -> None:
    """The converted ImageNet backbone under JAX (converted there too, into a fresh cache): same answer."""
    out = _run_under_jax(
        f"""
        import os
        os.environ["OP_CLASSIFIER_CACHE"] = {str(tmp_path / "cache")!r}
        import keras
        import numpy as np
        from tests.test_weights import MILITARY_UNIFORM, _imagenet_classifier, _photo, _photos

        assert keras.backend.backend() == "jax"
        _, top1 = _imagenet_classifier(1.0, 1.0, 224)
        assert top1(_photo(_photos()["grace_hopper"], 224)) == MILITARY_UNIFORM
        from op_classifier.models.efficientnet_lite import build_model
        model = build_model(4, 96, resize=64, weights="imagenet", seed=1)
        assert model.predict(np.zeros((1, 96, 96, 3)), verbose=0).shape == (1, 4)
        print("LITE_OK")
        """,
        REPO,
    )
    assert "LITE_OK" in out


@pytest.mark.slow
def test_efficientnet_lite_s_convolutions_take_the_fast_path_under_jax_on_a_cpu(tmp_path: Path) -> None:
    """Under JAX on a CPU the depthwise layers run as shifted products and the 1 x 1 ones as matrix
    products, with Keras's outputs, and a saved model loads back with them."""
    out = _run_under_jax(
        f"""
        import numpy as np
        from keras import ops
        from op_classifier.models.common.convolutions import Conv2D, DepthwiseConv2D, _jax_on_cpu
        from op_classifier.models.common.saving import load_model
        from op_classifier.models.efficientnet_lite import build_model

        model = build_model(4, 40, resize=None, weights=None, seed=1)
        dw = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, DepthwiseConv2D)]
        assert len(dw) == 16 and all(_jax_on_cpu(layer) for layer in dw)
        strided = next(layer for layer in dw if layer.strides == (2, 2))
        x = np.random.default_rng(0).normal(size=(2, 20, 20, strided.kernel.shape[2])).astype("float32")
        plain = ops.depthwise_conv(x, strided.kernel, strides=2, padding="same")
        np.testing.assert_allclose(np.asarray(strided(x)), np.asarray(plain), atol=1e-4)
        pointwise = model.get_layer("backbone").get_layer("block1_project_conv")
        assert isinstance(pointwise, Conv2D) and _jax_on_cpu(pointwise)
        x = np.random.default_rng(2).normal(size=(2, 5, 5, pointwise.kernel.shape[2])).astype("float32")
        np.testing.assert_allclose(np.asarray(pointwise(x)), np.asarray(ops.conv(x, pointwise.kernel)), atol=1e-4)
        model.save({str(tmp_path / "m.keras")!r})
        images = np.random.default_rng(1).uniform(0, 255, size=(2, 40, 40, 3)).astype("float32")
        again = load_model({str(tmp_path / "m.keras")!r})
        np.testing.assert_allclose(again.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
        print("SHIFTED_OK")
        """,
        REPO,
        tensorflow_free=False,  # Keras's file utilities use TensorFlow's gfile when it is installed
    )
    assert "SHIFTED_OK" in out


LOADERS = {
    "evaluate": "from op_classifier.stages import evaluate\nmodel = evaluate.load_model(path)",
    "predict": "from op_classifier.serving import predict\nmodel = predict._loaded(Path(path), ['a', 'b'], path).model",
    "serve": (
        "from types import SimpleNamespace\nfrom op_classifier.tracking.served import PixelClassifier\n"
        "served = PixelClassifier()\nserved.load_context(SimpleNamespace(artifacts={'keras_model': path}))\n"
        "model = served.model"
    ),
}


@pytest.fixture(scope="module")
def jax_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet's model.keras saved under JAX (with our RandomAffine layer), once for the loaders below."""
    path = tmp_path_factory.mktemp("jax-model") / "model.keras"
    _run_under_jax(
        f"""
        from op_classifier.models.resnet import build_model
        build_model(2, 32, widths=[16], resize=None, seed=1).save({str(path)!r})
        """,
        REPO,
        tensorflow_free=False,  # Keras's file utilities use TensorFlow's gfile when it is installed
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_fresh_process_loads_a_saved_model_under_jax(loader: str, jax_saved_model: Path) -> None:
    """Under DVC every stage is its own process: evaluate, predict and serve load train's model.keras
    (its RandomAffine layer is ours) without having built a model first."""
    out = _run_under_jax(
        f"""
        from pathlib import Path
        path = {str(jax_saved_model)!r}
        {LOADERS[loader].replace(chr(10), chr(10) + "        ")}
        assert any(type(layer).__name__ == "RandomAffine" for layer in model.layers)
        print("LOADED")
        """,
        REPO,
    )
    assert "LOADED" in out
