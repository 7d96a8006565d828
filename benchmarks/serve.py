"""What serving costs over the bare model: one-image requests to `op-classifier serve`, sequentially.

Usage: python benchmarks/serve.py [--model models:/op-classifier@champion] [--photo 640x480] [--requests 200]
By default it registers an untrained build_model(4, 180, resize=96) as champion in a temporary store
and serves that; with --model it serves that URI from the project's store (MLFLOW_TRACKING_URI, else
mlflow.db at the root), as `make serve` does.
Two request bodies, one image each: a --photo JPEG as TensorFlow Serving's {"instances": [{"b64": ...}]},
and the 180x180 pixel array a client makes of it. Prints requests/s and median latency over HTTP (one
keep-alive connection, as requests.Session or a TensorFlow Serving client keeps; and urllib's new
connection a request) beside the same work in this process, then where the time of a request goes.
Everything stays on 127.0.0.1; every loop stops after --requests calls or --seconds seconds.
"""

from __future__ import annotations

import argparse
import base64
import gc
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # imported late at run time: TensorFlow is slow to load
    import keras

REPO = Path(__file__).resolve().parents[1]
NAME = "op-classifier"  # tracking.model_name
CLI = str(Path(sys.executable).parent / "op-classifier")
SIZE = 180


def timed(call: Callable[[], object], count: int, warmup: int, seconds: float) -> list[float]:
    """Seconds per call, after warm-up; stops after count calls or the time budget."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < count and time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def show(label: str, times: list[float]) -> None:
    """One line: calls/s, median and 90th-percentile latency."""
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    print(
        f"  {label:44s} {len(times) / sum(times):8.1f}/s   median {statistics.median(times) * 1e3:7.2f} ms"
        f"   p90 {p90 * 1e3:7.2f} ms   (n={len(times)})"
    )


def register_untrained(root: Path) -> None:
    """An untrained default-size model, registered as champion in root/mlflow.db."""
    from op_classifier import config
    from op_classifier.models.common.compile import compile_model
    from op_classifier.models.seed_cnn import build_model
    from op_classifier.tracking.runs import MlflowTracker

    cfg = config.load((f"tracking.uri=sqlite:///{root / 'mlflow.db'}",), conf_dir=root / "conf")
    model = compile_model(build_model(4, SIZE, resize=96, seed=0), 1e-3, ["Luffy", "Nami", "Sanji", "Zoro"])
    tracker = MlflowTracker(cfg.tracking)
    example = np.zeros((1, SIZE, SIZE, 3), dtype="float32")
    with tracker.run("serve-benchmark"):
        uri = tracker.log_model(model, example)
    tracker.register(uri, score=1.0, target=0.0, metric="val_accuracy")


def load_served(store: str, uri: str) -> tuple[Any, keras.Model]:
    """The logged op-classifier pyfunc, as the server loads it, and the Keras model inside it."""
    import mlflow

    mlflow.set_tracking_uri(store)
    pyfunc = mlflow.pyfunc.load_model(uri)
    return pyfunc, pyfunc.unwrap_python_model().model


def photo_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG of size (w, h): smooth random colour fields plus grain, about the bytes of a real photo."""
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    grain = rng.normal(0, 8, (size[1], size[0], 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(np.asarray(field, dtype=np.float64) + grain, 0, 255).astype(np.uint8)).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()


def server_work(pyfunc: Any) -> tuple[Any, Callable[[bytes], object]]:
    """The served model as the server holds it, and what the server does with a request body minus HTTP."""
    from op_classifier.serving import serve
    from op_classifier.tracking import served as serving_model

    served = serving_model.ServedModel(pyfunc, (SIZE, SIZE, 3))

    def work(body: bytes) -> object:
        status, answer = serve.score(served, body)
        assert status == 200, answer
        return answer

    return served, work


def stages(pixels_body: bytes, b64_body: bytes, jpeg: bytes, served: Any) -> list[tuple[str, Callable[[], object]]]:
    """The steps of a request, each alone."""
    import orjson

    from op_classifier.data.images import decode_image
    from op_classifier.data.pixels import checked_pixels
    from op_classifier.defaults import MAX_IMAGE_PIXELS
    from op_classifier.serving import request

    nested = orjson.loads(pixels_body)["instances"]
    array = np.asarray(nested)
    b64 = orjson.loads(b64_body)["instances"][0]["b64"]
    image = decode_image(jpeg, SIZE, MAX_IMAGE_PIXELS)[None]
    return [
        ("pixels: request.pixel_array (the server's)", lambda: request.pixel_array(pixels_body, served.shape)),
        ("pixels: checks (dtype, NaN, range)", lambda: checked_pixels(array, served.shape)),
        ("pixels, general path: request.scan_json", lambda: request.scan_json(pixels_body)),
        ("pixels, general path: orjson.loads", lambda: orjson.loads(pixels_body)),
        ("pixels, general path: np.asarray(lists)", lambda: np.asarray(nested)),
        ("pixels, before: json.loads", lambda: json.loads(pixels_body.decode())),
        ("b64: request.read_request (orjson)", lambda: request.read_request(b64_body, served.shape)),
        ("b64: base64 decode", lambda: base64.b64decode(b64, validate=True)),
        ("b64: images.decode_image (as prepare)", lambda: decode_image(jpeg, SIZE, MAX_IMAGE_PIXELS)),
        ("the model: ServedModel.predict_images", lambda: served.predict_images(image)),
    ]


def start_server(
    root: Path, port: int, model: str | None, log: Path, extra: tuple[str, ...] = (), seconds: float = 120
) -> subprocess.Popen:
    """`op-classifier serve [extra]` in root, in its own process group; returns once /ping answers."""
    args = [CLI, "serve", "--port", str(port), *(["--model", model] if model else []), *extra]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} if model is None else None
    process = subprocess.Popen(
        args, cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit(f"server not up after {seconds:g} s")


def stop(process: subprocess.Popen) -> None:
    """End the server's whole process group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def free_port() -> int:
    """A port nobody listens on, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    """Model and server work in-process, then the same one-image requests over HTTP, then the stages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="serve this MLflow URI from the project's store instead")
    parser.add_argument("--photo", default="640x480", help="size of the generated JPEG, WxH")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30, help="time budget of each measured loop")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="op-serve-bench-"))
    try:
        root = REPO if args.model else work
        if args.model:
            store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"
        else:
            shutil.copytree(REPO / "conf", work / "conf")
            register_untrained(work)
            store = f"sqlite:///{work / 'mlflow.db'}"
        pyfunc, model = load_served(store, args.model or f"models:/{NAME}@champion")
        served, server_side = server_work(pyfunc)

        from op_classifier.data.images import decode_image

        width, height = (int(side) for side in args.photo.lower().split("x"))
        jpeg = photo_jpeg((width, height))
        image = decode_image(jpeg, SIZE, 89_478_485)[None]  # the pixels a client makes of the photo
        ready = image.astype("float32")
        b64_body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()
        pixels_body = json.dumps({"instances": image.astype(int).tolist()}).encode()
        print(
            f"one image per request, sequential; {os.cpu_count()} CPU cores, load average "
            f"{os.getloadavg()[0]:.2f} at start; model {args.model or 'untrained build_model(4, 180, resize=96)'}"
        )
        print(
            f"  b64 body: a {width}x{height} JPEG ({len(jpeg) / 1024:.0f} KiB, {len(b64_body) / 1024:.0f} KiB "
            f"of JSON); pixels body: {SIZE}x{SIZE}x3 integers ({len(pixels_body) / 1024:.0f} KiB of JSON)"
        )
        n, w, s = args.requests, args.warmup, args.seconds
        print("in-process:")
        show("model(x, training=False)", timed(lambda: model(ready, training=False), n, w, s))
        show("model.predict_on_batch(x)", timed(lambda: model.predict_on_batch(ready), n, w, s))
        show("pyfunc.predict(x)", timed(lambda: pyfunc.predict(ready), n, w, s))
        show("ServedModel.predict_images (the server's)", timed(lambda: served.predict_images(image), n, w, s))
        show("b64 JPEG body: JSON + decode + predict", timed(lambda: server_side(b64_body), n, w, s))
        show("pixels body: JSON + checks + predict", timed(lambda: server_side(pixels_body), n, w, s))

        port = free_port()
        server = start_server(root, port, args.model, work / "serve.log")
        try:
            print("over HTTP:")
            for label, path, body in (
                (f"b64 JPEG, /v1/models/{NAME}:predict", f"/v1/models/{NAME}:predict", b64_body),
                ("b64 JPEG, /invocations", "/invocations", b64_body),
                ("pixels, /invocations", "/invocations", pixels_body),
                (f"pixels, /v1/models/{NAME}:predict", f"/v1/models/{NAME}:predict", pixels_body),
            ):
                show(label, timed(keep_alive_post(port, path, body), n, w, s))
            for label, body in (
                ("b64 JPEG, urllib (a connection each)", b64_body),
                ("pixels, urllib (a connection each)", pixels_body),
            ):
                show(label, timed(urllib_post(port, "/invocations", body), n, w, s))
            show("GET /ping (HTTP alone)", timed(keep_alive_get(port, "/ping"), n, w, s))
        finally:
            stop(server)
        print("where the time goes, in-process (the garbage collector paused, as the server pauses it):")
        gc.disable()
        for label, step in stages(pixels_body, b64_body, jpeg, served):
            show(label, timed(step, n, w, s))
        gc.enable()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep_alive_post(port: int, path: str, body: bytes) -> Callable[[], None]:
    """POST body to path on one kept-alive connection; checks the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}

    def post() -> None:
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        assert answer.status == 200 and len(json.loads(answer.read())["predictions"][0]) == 4

    return post


def keep_alive_get(port: int, path: str) -> Callable[[], None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get() -> None:
        connection.request("GET", path)
        answer = connection.getresponse()
        assert answer.status == 200
        answer.read()

    return get


def urllib_post(port: int, path: str, body: bytes) -> Callable[[], None]:
    """POST body to path with urllib, which opens a connection for every request."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )

    def post() -> None:
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert len(json.loads(answer.read())["predictions"][0]) == 4

    return post


if __name__ == "__main__":
    main()
