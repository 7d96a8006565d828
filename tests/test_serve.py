"""`op-classifier serve`: a registered champion over real HTTP, TensorFlow Serving's body in, probabilities out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from op_classifier import cli
from op_classifier.model import build_model, compile_model
from op_classifier.tracking import Tracker
from tests.conftest import REPO, compose

CLI = str(Path(sys.executable).parent / "op-classifier")
CLASSES = ["Luffy", "Nami", "Sanji", "Zoro"]
SIZE = 32
START_TIMEOUT = 90  # seconds for the server to load TensorFlow and the model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "conf", root / "conf")
    return root


def _env() -> dict[str, str]:
    # Without MLFLOW_TRACKING_URI the command uses the project's own sqlite:///<cwd>/mlflow.db.
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """A project whose mlflow.db holds a tiny model as champion: (root, images, the model's probabilities)."""
    root = _project(tmp_path_factory.mktemp("serve") / "project")
    cfg = compose(f"tracking.uri=sqlite:///{root / 'mlflow.db'}")
    model = compile_model(build_model(num_classes=4, image_size=SIZE, resize=None, seed=0), 1e-3, CLASSES)
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = Tracker(cfg.tracking)
    with tracker.run("serve-test"):
        uri = tracker.log_model(model, images[:1])
    assert tracker.register(uri, score=1.0, target=0.0, metric="val_accuracy")["champion"]
    yield root, images, np.asarray(model(images, training=False))
    # mlflow.set_tracking_uri() exported our store; later tests' subprocesses must not inherit it.
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def server(champion: tuple) -> Iterator[str]:
    """`op-classifier serve` on a free port of 127.0.0.1, killed (process group) afterwards; yields its URL."""
    root = champion[0]
    port = _free_port()
    log = (root / "serve.log").open("w")
    process = subprocess.Popen([CLI, "serve", "--port", str(port)], cwd=root, env=_env(), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, root / "serve.log")
        yield url
    finally:
        _stop(process)
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server not up after {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _instances(images: Any) -> bytes:
    return json.dumps({"instances": np.asarray(images).tolist()}).encode()


def test_instances_get_the_keras_models_probabilities(server: str, champion: tuple) -> None:
    _, images, expected = champion
    status, answer = _post(server, _instances(images))
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["predictions"]), expected, atol=1e-5)
    # Integer pixels, as a client reading an image file sends them, are the same request.
    status, answer = _post(server, _instances(images.astype(int)))
    assert status == 200 and np.allclose(answer["predictions"], expected, atol=1e-5)


BAD_BODIES = {
    "wrong image size": _instances(np.zeros((2, 16, 16, 3))),
    "no batch axis": _instances(np.zeros((SIZE, SIZE, 3))),
    "strings": json.dumps({"instances": [[[["a", "b", "c"]] * SIZE] * SIZE]}).encode(),
    "nulls": json.dumps({"instances": [[[[None] * 3] * SIZE] * SIZE]}).encode(),
    "pixels above 255": _instances(np.full((1, SIZE, SIZE, 3), 300.0)),
    "malformed JSON": b'{"instances": [[1, 2',
    "no instances key": json.dumps({"images": [[1, 2, 3]]}).encode(),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_request_is_a_4xx_with_a_message_and_the_server_stays_up(server: str, champion: tuple, name: str) -> None:
    status, answer = _post(server, BAD_BODIES[name])
    assert 400 <= status < 500 and answer.get("message"), (status, answer)
    status, _ = _post(server, _instances(champion[1]))
    assert status == 200


def test_no_champion_is_a_one_line_error(tmp_path: Path) -> None:
    root = _project(tmp_path / "empty")
    done = subprocess.run([CLI, "serve", "--port", str(_free_port())], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # TensorFlow logs its import to stderr before it
    assert last.startswith(f"error: no champion model registered in sqlite:///{root.resolve()}/mlflow.db"), last
    assert "make run" in last and not (root / "mlflow.db").exists()


def test_taken_port_or_unknown_alias_is_a_one_line_error(server: str, champion: tuple,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    def no_exec(*args: object) -> None:  # a passing check must not turn this test process into a server
        raise AssertionError("serve got past its checks")

    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(champion[0])
    port = server.rsplit(":", 1)[1]
    for args, message in ((["--port", port], f"error: cannot listen on 127.0.0.1:{port}: already in use"),
                          (["--model", "models:/op-classifier@nope"], "error: no model op-classifier@nope")):
        with pytest.raises(SystemExit) as exited:
            cli.main(["serve", *args])
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
