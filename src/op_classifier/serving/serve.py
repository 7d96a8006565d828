"""`op-classifier serve`: the registered champion model over REST (port 8501), behind a guard.

POST /invocations takes TensorFlow Serving's request body, `{"instances": [...]}` of shape (batch, S, S, 3)
raw 0..255 pixels, and answers `{"predictions": [[p_class, ...], ...]}`, as MLflow's scoring server does
(`"inputs"` is taken for `"instances"` too). Each instance may instead be an encoded image, TensorFlow
Serving's form for binary data: `{"instances": [{"b64": "<base64 of a JPEG, PNG, ... file>"}]}`, decoded
exactly as prepare decodes a file (images.decode_image: by content, EXIF orientation, any mode to RGB, the
decompression-bomb guard at data.max_image_pixels, the bilinear resize to S x S); one kind per request,
b64 objects mixed with pixel arrays are refused. TensorFlow Serving's own REST paths answer the same:
POST /v1/models/<name>:predict (and /v1/models/<name>/versions/<version>:predict), where a columnar
`"inputs"` body gets `"outputs"` as there, and GET /v1/models/<name>[/versions/<version>] its model-status
body; <name> is the registered model's (tracking.model_name for a run or a path), any other is a 404.
GET /ping and /health answer 200 once the model is loaded.

We run the app ourselves (uvicorn, in this process) rather than `mlflow models serve`, whose app echoes a
malformed body whole in its 400, prefixes every model error with the dumped input array, answers 500 for a
missing Content-Type or a deeply nested array, reads bodies of any size, and turns JSON booleans into
pixels before the model can see them. Here every refusal is `{"error_code": ..., "message": ...}` with a
message of at most MESSAGE_MAX characters that never quotes the request:

  400  malformed or non-UTF-8 JSON, nesting deeper than the input needs, no "instances", true/false,
       strings or nulls among the pixels, a ragged array, a wrong shape, NaN or infinity, values outside 0..255;
       a b64 value that is not base64 or not an image (the message names the instance), b64 mixed with pixels;
       a number of thousands of digits; a request uvicorn cannot parse (its own answer made JSON)
  404  another model name under /v1/models/ (or an unknown path)
  408  a body that has not arrived whole within 30 s (guard.BODY_SECONDS); a request's head (its line and
       headers) that has not within 10 s of the connection or of the previous answer (guard.HEADER_SECONDS;
       a connection that sent nothing is closed without an answer)
  413  a body over --max-body-mb: refused from its Content-Length before it is read, or as soon as a
       chunked body passes the limit; never kept in memory (see _sends_regardless for when the rest is read).
       More b64 images in one request than max_images (8 times the limit as decoded pixels), or images
       holding more than 2 x data.max_image_pixels in all (request.REQUEST_PIXELS_FACTOR)
  415  a body declared as another type than application/json, or in a charset other than UTF-8; none
       declared, or curl's form type, is read as JSON (as TensorFlow Serving does)
  500  the model answered NaN or infinity, not probabilities (a broken model: JSON has no NaN, and a null
       passed off as a result is worse than no result); any other failure of the model
  503  b64 images that would take all the images being decoded at once past 4 x data.max_image_pixels;
       a connection past the 512 open at once (guard.MAX_CONNECTIONS), answered as it opens

The body limit (MAX_BODY_MB, 16 MiB): about 30 images of 180x180 as JSON integers (0.49 MiB each), which
json.loads turns into about 6 times as many bytes of Python objects (8 for floats): a request peaks near
100-130 MiB of memory. MLflow's scoring server had no limit; raise this one with --max-body-mb.

This module starts the server and scores; guard.py answers every refusal, request.py reads a body into
pixels; runtime.py picks what runs the model (LiteRT where a checked LiteRT file exists or can be made,
else Keras through tracking/served.py) and batching.py lets concurrent requests share a model call. None
of them imports MLflow or TensorFlow; on LiteRT the serving process never loads TensorFlow or Keras.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import math
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from op_classifier import config, tracking
from op_classifier.config import CHAMPION
from op_classifier.data.pixels import checked_pixels
from op_classifier.defaults import BATCH_WINDOW_MS, HOST, MAX_BATCH, MAX_BODY_MB, MAX_IMAGE_PIXELS, SERVE_PORT
from op_classifier.errors import DataError, OpClassifierError
from op_classifier.serving.batching import Batcher
from op_classifier.serving.guard import (
    HEADER_SECONDS,
    MAX_CONNECTIONS,
    ASGIApp,
    BadRequest,
    Guard,
    error_body,
    json_protocol,
)
from op_classifier.serving.request import decoded_images, max_images, read_request
from op_classifier.serving.runtime import QUANTIZE, RUNTIMES, NoLiteRT, litert_served
from op_classifier.tracking import ModelStore, Served

log = logging.getLogger(__name__)


class ServeError(OpClassifierError):
    """The server cannot start."""


def default_model(cfg: config.Config) -> str:
    """models:/<tracking.model_name>@champion."""
    return f"models:/{cfg.tracking.model_name}@{CHAMPION}"


def check_registered(model_uri: str, store: ModelStore, cfg: config.Config) -> str | None:
    """Fail in one line when a models:/<name>@<alias> URI points to nothing in the store; else its version."""
    ref = tracking.registered(model_uri)
    if ref is None or not ref.alias:
        return None  # other URIs (versions, runs:/, paths): loading the model reports those
    name, alias = ref.name, ref.alias
    version = store.alias_version(name, alias)
    if version is not None:
        return str(version)
    if alias == CHAMPION and name == cfg.tracking.model_name:
        raise ServeError(
            f"no {CHAMPION} model registered in {store.uri}: run `make run` first (a model becomes "
            f"{CHAMPION} when {cfg.tracking.champion_metric} >= tracking.champion_target, "
            f"now {cfg.tracking.champion_target})"
        )
    raise ServeError(f"no model {name}@{alias} registered in {store.uri}")


def served_name(model_uri: str, alias_version: str | None, cfg: config.Config) -> tuple[str, str]:
    """(name, version) under TensorFlow Serving's /v1/models/<name>[/versions/<version>]: a models:/ URI's
    registered name and version (its alias's), else tracking.model_name and version 1."""
    ref = tracking.registered(model_uri)
    if ref is None:
        return cfg.tracking.model_name, "1"
    return ref.name, alias_version or (ref.version if (ref.version or "").isdigit() else "1")


def check_port(host: str, port: int) -> None:
    """Fail in one line when host:port cannot be listened on (taken, or not an address of this machine)."""
    _bind(host, port).close()


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), or a one-line ServeError."""
    try:
        family, kind, proto, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # With its protocol named (IPPROTO_TCP, not 0), asyncio sets TCP_NODELAY on every connection
        # accepted: without it, Nagle's algorithm held each answer's body behind its headers until the
        # client's delayed ACK, 40 ms a request on a kept-alive connection.
        sock = socket.socket(family, kind, proto)
        try:
            # As uvicorn does: a port left in TIME_WAIT is free, one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    except OSError as error:
        reason = "already in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        raise ServeError(f"cannot listen on {host}:{port}: {reason} (choose another with --port)") from None
    return sock


def score(
    served: Served,
    body: bytes,
    *,
    tf_serving: bool = False,
    most: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[int, bytes]:
    """(HTTP status, JSON answer) to a request body: the probabilities, or a short error.

    tf_serving: the answer of TensorFlow Serving's path (a columnar "inputs" body gets "outputs");
    most: b64 images a request may hold (default: max_images at MAX_BODY_MB); max_pixels: of each one.
    """
    most = max_images(MAX_BODY_MB * 2**20, served.shape) if most is None else most
    parsed = parse(served, body, most, max_pixels)
    if not isinstance(parsed, Parsed):
        return parsed
    return answer(_forward(served, parsed.pixels), parsed.key, tf_serving)


@dataclass
class Parsed:
    """A request read and checked: its input key and its images (checked pixels, or decoded b64 files)."""

    key: str
    pixels: np.ndarray


def parse(served: Served, body: bytes, most: int, max_pixels: int) -> Parsed | tuple[int, bytes]:
    """A request body's images, checked, or its refusal (HTTP status, JSON): nothing of it reaches the model."""
    with _collection_paused():
        try:
            key, instances = read_request(body, served.shape)
            images = decoded_images(instances, served.shape, most, max_pixels)
            return Parsed(key, checked_pixels(instances, served.shape) if images is None else images)
        except BadRequest as refused:
            return refused.status, error_body(refused.status, str(refused))
        except DataError as bad:  # data.pixels.checked_pixels: what is wrong with the pixels
            return 400, error_body(400, str(bad))


def _forward(served: Served, pixels: np.ndarray) -> np.ndarray | Exception:
    """The model's probabilities, or what it raised (answer makes that a 500)."""
    try:
        return served.forward(pixels)
    except Exception as error:  # noqa: BLE001 - the model's failure is answered, not raised
        return error


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a request is parsed and predicted, on again after.

    A body of pixels that pixel_array leaves to the general path (floats, say) is some 32,000 Python
    lists per image until numpy takes it: enough allocations to set off collections that walk every
    object of the process (TensorFlow's and MLflow's: about half a million), which took 300-500 ms every
    few requests (a p90 of 320 ms against a median of 18 ms, on 2 loaded cores). Those lists hold no
    cycles: reference counting frees them the moment a request is answered.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # a request that started while another had paused it leaves turning it on to that one
            gc.enable()


def answer(probabilities: np.ndarray | Exception, key: str, tf_serving: bool) -> tuple[int, bytes]:
    """(HTTP status, JSON) for the model's answer: the probabilities, or a 500 for a failure or NaN."""
    if isinstance(probabilities, Exception):  # the model itself failed: logged whole, answered short
        log.error("prediction failed", exc_info=probabilities)
        return 500, error_body(500, f"prediction failed ({type(probabilities).__name__}); see the server's log")
    broken = int(np.count_nonzero(~np.isfinite(np.asarray(probabilities, np.float64))))
    if broken:  # JSON has no NaN: orjson wrote null, answered 200 as if it were a result
        log.error("the model answered NaN or infinity for %d of its %d outputs", broken, np.size(probabilities))
        return 500, error_body(
            500, "the model answered NaN or infinity, not probabilities: it is broken; see the server's log"
        )
    # TensorFlow Serving answers the columnar "inputs" with "outputs"; MLflow's /invocations, "predictions".
    out = "outputs" if tf_serving and key == "inputs" else "predictions"
    return 200, orjson.dumps({out: np.asarray(probabilities).tolist()})


def app(
    served: Served,
    max_body: int,
    name: str,
    version: str = "1",
    max_pixels: int = MAX_IMAGE_PIXELS,
    batcher: Batcher | None = None,
) -> ASGIApp:
    """The scoring app, guarded: POST /invocations and TensorFlow Serving's /v1/models/<name>:predict,
    GET /v1/models/<name> (its model status), /ping and /health. With a batcher, concurrent requests
    share model calls."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    most = max_images(max_body, served.shape)
    elsewhere = f"this server serves the model {name}, version {version}"

    async def respond(request: Request, tf_serving: bool) -> Response:
        # Parsing runs in a thread (/ping answers while a large request is on); a request waiting for its
        # batch holds no thread, so the next ones are parsed meanwhile.
        body = await request.body()
        with batcher.incoming() if batcher else contextlib.nullcontext():
            parsed = await asyncio.to_thread(parse, served, body, most, max_pixels)
        if isinstance(parsed, Parsed):
            if batcher is None:
                probabilities = await asyncio.to_thread(_forward, served, parsed.pixels)
            else:
                probabilities = await _batched(batcher, parsed.pixels)
            parsed = answer(probabilities, parsed.key, tf_serving)
        status, body = parsed
        return Response(body, status_code=status, media_type="application/json")

    def ours(request: Request) -> bool:
        params = request.path_params
        return params["name"] == name and params.get("version", version) == version

    def not_here() -> Response:
        return Response(error_body(404, elsewhere), status_code=404, media_type="application/json")

    async def invocations(request: Request) -> Response:
        return await respond(request, tf_serving=False)

    async def tf_predict(request: Request) -> Response:
        return await respond(request, tf_serving=True) if ours(request) else not_here()

    async def tf_status(request: Request) -> Response:
        if not ours(request):
            return not_here()
        status = {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        return Response(json.dumps({"model_version_status": [status]}), media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/v1/models/{name}:predict", tf_predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", tf_predict, methods=["POST"]),
        Route("/v1/models/{name}", tf_status, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", tf_status, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
    ]
    return Guard(Starlette(routes=routes), max_body)


async def _batched(batcher: Batcher, pixels: np.ndarray) -> np.ndarray | Exception:
    """The rows of pixels from a model call shared with other requests, or what the model raised."""
    try:
        return await asyncio.wrap_future(batcher.submit(pixels))
    except Exception as error:  # noqa: BLE001 - the model's failure is answered, not raised
        return error


def run(
    model_uri: str | None = None,
    host: str = HOST,
    port: int = SERVE_PORT,
    max_body_mb: float = MAX_BODY_MB,
    overrides: Sequence[str] = (),
    trust_code: bool = False,
    runtime: str = "auto",
    quantize: str = "none",
    batch_window_ms: float = BATCH_WINDOW_MS,
    max_batch: int = MAX_BATCH,
) -> None:
    """Check the limits, the model and the port, load the model, then serve until stopped (Ctrl-C, SIGTERM)."""
    _check_options(max_body_mb, runtime, quantize, batch_window_ms, max_batch)
    cfg = config.load(tuple(overrides))
    store = tracking.open_store(cfg.tracking)
    model_uri = model_uri or default_model(cfg)
    if ":/" not in model_uri and not Path(model_uri).is_dir():  # else MLflow: "downloading ... from /:"
        raise ServeError(
            f"--model {model_uri}: no such folder (give a logged model's folder, or models:/<name>@<alias>, "
            "models:/<name>/<version>, runs:/<run id>/<path>)"
        )
    version = check_registered(model_uri, store, cfg)
    name, version = served_name(model_uri, version, cfg)
    check_port(host, port)  # before the model's seconds of loading: a taken port fails at once
    served = load(model_uri, store, runtime, quantize, trust_code, overrides)
    batcher = Batcher(served.forward, batch_window_ms / 1000, max_batch) if batch_window_ms > 0 else None
    sock = _bind(host, port)  # again: taken meanwhile is the same one-line error, not uvicorn's traceback
    max_body = int(max_body_mb * 2**20)
    batching = f"batches of up to {max_batch} within {batch_window_ms:g} ms" if batch_window_ms > 0 else "no batching"
    print(
        f"serving {model_uri} from {store.uri} on http://{host}:{port}/invocations and "
        f"/v1/models/{name}:predict ({served.runtime}; {batching}; bodies up to {max_body_mb:g} MiB)",
        flush=True,
    )
    scoring = app(served, max_body, name, version, cfg.data.max_image_pixels, batcher)
    uvicorn_server(scoring).run(sockets=[sock])


def _check_options(max_body_mb: float, runtime: str, quantize: str, batch_window_ms: float, max_batch: int) -> None:
    """One-line ServeErrors for options no server can run with, before anything loads."""
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise ServeError(f"--max-body-mb must be a positive number of MiB, not {max_body_mb}")
    if runtime not in RUNTIMES or quantize not in QUANTIZE:
        raise ServeError(f"--runtime is one of {', '.join(RUNTIMES)}; --quantize one of {', '.join(QUANTIZE)}")
    if runtime == "keras" and quantize != "none":
        raise ServeError(f"--quantize {quantize} is a LiteRT file's: drop it or serve with --runtime litert")
    if not (math.isfinite(batch_window_ms) and 0 <= batch_window_ms <= 1000):
        raise ServeError(f"--batch-window-ms must be 0 (no batching) to 1000, not {batch_window_ms}")
    if max_batch < 1:
        raise ServeError(f"--max-batch must be at least 1, not {max_batch}")


def load(
    model_uri: str, store: ModelStore, runtime: str, quantize: str, trust_code: bool, overrides: Sequence[str]
) -> Served:
    """The model on LiteRT where it can run there (runtime auto or litert), else on Keras (auto, keras)."""
    if runtime == "keras":
        return store.served(model_uri, trust_code)
    try:
        return litert_served(model_uri, store, quantize, overrides)
    except NoLiteRT as error:
        if runtime == "litert" or quantize != "none":  # LiteRT asked for by name: no other runtime will do
            raise ServeError(f"cannot serve {model_uri} on LiteRT: {error}") from None
        why = str(error)
    served = store.served(model_uri, trust_code)  # its one-line error alone when Keras cannot load it either
    print(f"note: serving on Keras, not LiteRT: {why}", file=sys.stderr, flush=True)
    return served


def uvicorn_server(
    scoring: ASGIApp, header_seconds: float = HEADER_SECONDS, max_connections: int = MAX_CONNECTIONS
) -> Any:
    """The uvicorn server of the scoring app: a request's head within header_seconds, at most max_connections."""
    import uvicorn

    protocol = json_protocol(header_seconds, max_connections)
    return uvicorn.Server(uvicorn.Config(scoring, log_level="info", http=protocol))
