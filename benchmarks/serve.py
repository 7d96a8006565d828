"""What serving costs over the bare model: one-image requests to `op-classifier serve`, sequentially.

Usage: python benchmarks/serve.py [--model models:/op-classifier@champion] [--requests 100] [--warmup 10]
By default it registers an untrained build_model(4, 180, resize=96) as champion in a temporary store
and serves that; with --model it serves that URI from the project's store (MLFLOW_TRACKING_URI, else
mlflow.db at the root), as `make serve` does.
Prints requests/s and median latency over HTTP beside the same model called in this process.
Everything stays on 127.0.0.1; every loop stops after --requests calls or --seconds seconds.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # imported late at run time: TensorFlow is slow to load
    import keras

REPO = Path(__file__).resolve().parents[1]
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
    print(f"  {label:40s} {len(times) / sum(times):8.1f}/s   median {statistics.median(times) * 1e3:7.2f} ms"
          f"   p90 {p90 * 1e3:7.2f} ms   (n={len(times)})")


def register_untrained(root: Path) -> None:
    """An untrained default-size model, registered as champion in root/mlflow.db."""
    from op_classifier import config
    from op_classifier.model import build_model, compile_model
    from op_classifier.tracking import Tracker

    cfg = config.validate(config.compose((f"tracking.uri=sqlite:///{root / 'mlflow.db'}",), conf_dir=root / "conf"))
    model = compile_model(build_model(4, SIZE, resize=96, seed=0), 1e-3, ["Luffy", "Nami", "Sanji", "Zoro"])
    tracker = Tracker(cfg.tracking)
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


def parse_and_predict(pyfunc: Any) -> Callable[[bytes], object]:
    """What the server does with a request body, minus HTTP: its checks and JSON parsing, then predict."""
    from op_classifier import serve, tracking

    served = tracking.ServedModel(pyfunc, (SIZE, SIZE, 3))
    return lambda body: served.predict(serve.read_instances(body, served.shape))


def start_server(root: Path, port: int, model: str | None, log: Path) -> subprocess.Popen:
    """`op-classifier serve` in root, in its own process group; returns once /ping answers (max 120 s)."""
    args = [CLI, "serve", "--port", str(port), *(["--model", model] if model else [])]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} if model is None else None
    process = subprocess.Popen(args, cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit("server not up after 120 s")


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
    """Model in-process, then the same one-image request over HTTP."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="serve this MLflow URI from the project's store instead")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60, help="time budget of each measured loop")
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
        pyfunc, model = load_served(store, args.model or "models:/op-classifier@champion")
        image = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3)).astype("float32")
        body = json.dumps({"instances": image.astype(int).tolist()}).encode()
        print(f"one {SIZE}x{SIZE}x3 image per call ({len(body) / 1024:.0f} KiB of JSON), sequential, "
              f"{os.cpu_count()} CPU cores, model {args.model or 'untrained build_model(4, 180, resize=96)'}:")
        n, w, s = args.requests, args.warmup, args.seconds
        show("model(x, training=False), in-process", timed(lambda: model(image, training=False), n, w, s))
        show("model.predict_on_batch(x), in-process", timed(lambda: model.predict_on_batch(image), n, w, s))
        show("pyfunc.predict(x), in-process", timed(lambda: pyfunc.predict(image), n, w, s))
        serve_body = parse_and_predict(pyfunc)
        show("checks + JSON + predict, in-process", timed(lambda: serve_body(body), n, w, s))

        port = free_port()
        server = start_server(root, port, args.model, work / "serve.log")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})

            def post() -> None:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert len(json.loads(answer.read())["predictions"][0]) == 4

            show("POST /invocations {instances}, HTTP", timed(post, n, w, s))
        finally:
            stop(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
