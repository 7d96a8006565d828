"""`op-classifier serve`: the registered champion model over REST (port 8501), behind a guard.

POST /invocations takes TensorFlow Serving's request body, `{"instances": [...]}` of shape (batch, S, S, 3)
raw 0..255 pixels, and answers `{"predictions": [[p_class, ...], ...]}`, as MLflow's scoring server does
(`"inputs"` is taken for `"instances"` too). GET /ping and /health answer 200 once the model is loaded.

We run the app ourselves (uvicorn, in this process) rather than `mlflow models serve`, whose app echoes a
malformed body whole in its 400, prefixes every model error with the dumped input array, answers 500 for a
missing Content-Type or a deeply nested array, reads bodies of any size, and turns JSON booleans into
pixels before the model can see them. Here every refusal is `{"error_code": ..., "message": ...}` with a
message of at most MESSAGE_MAX characters that never quotes the request:

  400  malformed or non-UTF-8 JSON, nesting deeper than the input needs, no "instances", true/false,
       strings or nulls among the pixels, a ragged array, a wrong shape, NaN or infinity, values outside 0..255
  413  a body over --max-body-mb: refused from its Content-Length before it is read, or as soon as a
       chunked body passes the limit; never kept in memory (see _sends_regardless for when the rest is read)
  415  a Content-Type other than application/json (missing included), or a charset other than UTF-8

This module imports neither MLflow nor TensorFlow: tracking.served_model loads the model when serving starts.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import socket
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from op_classifier import config
from op_classifier.errors import DataError, OpClassifierError

ALIAS = "champion"
HOST = "127.0.0.1"
PORT = 8501  # TensorFlow Serving's REST port, as the original served on
# 16 MiB: about 30 images of 180x180 as JSON integers (0.49 MiB each), which json.loads turns into
# about 6 times as many bytes of Python objects (8 for floats): a request peaks near 100-130 MiB of
# memory. MLflow's scoring server had no limit; raise this one with --max-body-mb for larger batches.
MAX_BODY_MB = 16
MESSAGE_MAX = 200  # characters of an error message, at most
INPUT_KEYS = ("instances", "inputs")  # TensorFlow Serving's row and columnar bodies: one input, the same here

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Predict = Callable[[Any], np.ndarray]


class ServeError(OpClassifierError):
    """The server cannot start."""


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and a short message that quotes none of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def default_model(cfg: config.Config) -> str:
    """models:/<tracking.model_name>@champion."""
    return f"models:/{cfg.tracking.model_name}@{ALIAS}"


def check_registered(model_uri: str, store: str, cfg: config.Config) -> None:
    """Fail in one line when a models:/<name>@<alias> URI points to nothing in the store."""
    from op_classifier import tracking

    scheme, _, rest = model_uri.partition(":/")
    name, _, alias = rest.strip("/").partition("@")
    if scheme != "models" or not alias:
        return  # other URIs (versions, runs:/, paths): loading the model reports those
    if tracking.alias_version(store, name, alias) is not None:
        return
    if alias == ALIAS and name == cfg.tracking.model_name:
        raise ServeError(f"no {ALIAS} model registered in {store}: run `make run` first (a model becomes "
                         f"{ALIAS} when {cfg.tracking.champion_metric} >= tracking.champion_target, "
                         f"now {cfg.tracking.champion_target})")
    raise ServeError(f"no model {name}@{alias} registered in {store}")


def check_port(host: str, port: int) -> None:
    """Fail in one line when host:port cannot be listened on (taken, or not an address of this machine)."""
    _bind(host, port).close()


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), or a one-line ServeError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
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


def error_body(status: int, message: str) -> bytes:
    """The JSON of an error answer: MLflow's {"error_code", "message"}, the message cut to MESSAGE_MAX."""
    try:
        code = HTTPStatus(status).name
    except ValueError:
        code = "ERROR"
    if len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 3] + "..."
    return json.dumps({"error_code": code, "message": message}).encode()


async def _send_error(send: Send, status: int, message: str) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware: POST bodies must be JSON within max_body bytes; every error answer is short JSON.

    It reads a POST body itself, counting as it comes (a Content-Length over the limit is refused before
    any of it is read), and hands the app the whole body in one message.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _ShortErrors(send)
        if scope["method"] == "POST":
            try:
                body = await self._body(scope, receive)
            except BadRequest as refused:
                await _send_error(send, refused.status, str(refused))
                return
            if body is None:
                return  # the client went away
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        headers = dict(scope["headers"])  # lower-case names (ASGI); a repeated header: its last value
        _check_content_type(headers.get(b"content-type"))
        limit = f"this server takes bodies of at most {self.max_body / 2**20:g} MiB (--max-body-mb)"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            if _sends_regardless(scope, headers):
                await _discard(receive)
            raise BadRequest(413, f"the body is {int(declared)} bytes; {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:  # a chunked body (no Content-Length): refused as soon as it passes
                if more and _sends_regardless(scope, headers):
                    await _discard(receive)
                raise BadRequest(413, f"the body passed {self.max_body} bytes; {limit}")
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)


def _sends_regardless(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """Whether the client sends its whole body before it reads an answer, on a connection it closes after.

    Such a client (urllib, HTTP/1.0) reads an early 413 only if the rest of its body is read first: uvicorn
    closes the connection after the answer, under a client still sending (a broken pipe, not a 413). With
    keep-alive, uvicorn itself discards the rest after an early answer; with `Expect: 100-continue` the
    client waits for our go-ahead before sending, and an early 413 means the body is never sent at all.
    """
    if b"100-continue" in headers.get(b"expect", b"").lower():
        return False
    connection = headers.get(b"connection", b"").lower()
    return b"close" in connection or (scope.get("http_version") == "1.0" and b"keep-alive" not in connection)


async def _discard(receive: Receive) -> None:
    """Read the rest of a refused body, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


def _check_content_type(value: bytes | None) -> None:
    """415 unless the Content-Type is application/json, with no charset or UTF-8."""
    if value is None:
        raise BadRequest(415, "no Content-Type: send the body as application/json")
    media, *parameters = value.decode("latin-1").split(";")
    if media.strip().lower() != "application/json":
        raise BadRequest(415, "Content-Type must be application/json")
    for parameter in parameters:
        name, _, charset = parameter.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest(415, "Content-Type application/json must be UTF-8 (charset=utf-8 or none)")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read already, then whatever the connection says next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class _ShortErrors:
    """A send that holds an error answer (status >= 400) and lets it out only as short JSON.

    The app's own refusals pass as they are; anything else (Starlette's plain-text 404, 405 or 500)
    becomes {"error_code", "message": the status's phrase}.
    """

    KEEP = 2 * MESSAGE_MAX + 100  # bytes of an error answer worth looking at

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        if len(self.body) <= self.KEEP:
            self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        status = self.start["status"]
        body = self.body if _is_short_error(self.body) else error_body(status, _phrase(status))
        headers = [(k, v) for k, v in self.start.get("headers", [])
                   if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _is_short_error(body: bytes) -> bool:
    if len(body) > _ShortErrors.KEEP:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    message = answer.get("message") if isinstance(answer, dict) else None
    return isinstance(message, str) and 0 < len(message) <= MESSAGE_MAX


# Bytes that matter to the scan below: brackets and braces, quotes, and the first letters of true/false.
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_SCANNED = _STEP != 0
_SCANNED[[ord('"'), ord("t"), ord("f")]] = True


def scan_json(body: bytes) -> tuple[int, bool]:
    """(deepest nesting, whether a true or false literal occurs) of UTF-8 JSON, skipping strings.

    numpy over the bytes, before json.loads recurses into them: tens of ms for 16 MiB. Exact up to the
    first syntax error, where json.loads stops too (in UTF-8, these ASCII bytes occur only as themselves).
    """
    raw = np.frombuffer(body, np.uint8)
    at = np.flatnonzero(_SCANNED[raw])
    char = raw[at]
    quote = char == ord('"')
    if quote.any() and (raw == ord("\\")).any():
        quote[quote] = ~_escaped(raw, at[quote])
    outside = ~quote & (np.cumsum(quote, dtype=np.int64) % 2 == 0)  # an even count of quotes before it
    depth = int(np.cumsum(np.where(outside, _STEP[char], 0), dtype=np.int64).max(initial=0))

    def followed(letter: str, by: str) -> bool:
        where = at[outside & (char == ord(letter))] + 1
        return bool((raw[where[where < raw.size]] == ord(by)).any())

    # Outside strings, "t" then "r" starts only `true`, "f" then "a" only `false` (not Infinity or numbers).
    return depth, followed("t", "r") or followed("f", "a")


def _escaped(raw: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Which quotes (positions in raw) follow an odd run of backslashes."""
    slashes = np.flatnonzero(raw == ord("\\"))
    starts = np.ones(slashes.size, bool)
    starts[1:] = np.diff(slashes) != 1
    run_start = slashes[starts][np.cumsum(starts) - 1]  # where each backslash's run begins
    index = np.minimum(np.searchsorted(slashes, quotes - 1), slashes.size - 1)
    run = np.where(slashes[index] == quotes - 1, quotes - run_start[index], 0)
    return run % 2 == 1


def _has_bool(value: Any) -> bool:
    """Whether a JSON true or false occurs in value (nested lists), found without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is True or item is False:
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def read_instances(body: bytes, shape: tuple[int, ...]) -> Any:
    """The "instances" of a request body (nested lists, unchecked values), or a BadRequest saying why not."""
    expected = f"(batch, {', '.join(map(str, shape))}) raw RGB pixel values 0..255"
    needed = len(shape) + 2  # the object, the batch, then one array per axis of an image
    depth, has_bool = scan_json(body)
    if depth > needed:
        raise BadRequest(400, f"the JSON nests {depth} levels deep; {{\"instances\": {expected}}} needs {needed}")
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise BadRequest(400, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:  # cannot happen below `needed` levels; kept as the last line of defence
        raise BadRequest(400, "the JSON nests too deep") from None
    keys = [key for key in INPUT_KEYS if isinstance(document, dict) and key in document]
    if len(keys) != 1:
        raise BadRequest(400, f'the body must be a JSON object with "instances" (or "inputs", not both): {expected}')
    instances = document[keys[0]]
    if has_bool and _has_bool(instances):
        raise BadRequest(400, f"{keys[0]} contain true/false, not pixels: expected {expected}")
    return instances


def app(predict: Predict, shape: tuple[int, ...], max_body: int) -> ASGIApp:
    """The scoring app, guarded: POST /invocations, GET /ping and /health."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(body: bytes) -> tuple[int, bytes]:
        try:
            probabilities = predict(read_instances(body, shape))
        except BadRequest as refused:
            return refused.status, error_body(refused.status, str(refused))
        except DataError as bad:  # the pixel checks of tracking.ServedModel.predict
            return 400, error_body(400, str(bad))
        except Exception as error:  # the model itself failed: logged whole, answered short
            log.exception("prediction failed")
            return 500, error_body(500, f"prediction failed ({type(error).__name__}); see the server's log")
        return 200, json.dumps({"predictions": np.asarray(probabilities).tolist()}).encode()

    async def invocations(request: Request) -> Response:
        # Parsing and predicting run in a thread: /ping answers while a large request is on.
        status, body = await asyncio.to_thread(answer, await request.body())
        return Response(body, status_code=status, media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")

    routes = [Route("/invocations", invocations, methods=["POST"]),
              Route("/ping", ping, methods=["GET"]), Route("/health", ping, methods=["GET"])]
    return Guard(Starlette(routes=routes), max_body)


def run(model_uri: str | None = None, host: str = HOST, port: int = PORT, max_body_mb: float = MAX_BODY_MB,
        overrides: Sequence[str] = ()) -> None:
    """Check the limit, the model and the port, load the model, then serve until stopped (Ctrl-C, SIGTERM)."""
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise ServeError(f"--max-body-mb must be a positive number of MiB, not {max_body_mb}")
    import uvicorn

    from op_classifier import tracking

    cfg = config.validate(config.compose(tuple(overrides)))
    store = tracking.tracking_uri(cfg.tracking)
    model_uri = model_uri or default_model(cfg)
    check_registered(model_uri, store, cfg)
    check_port(host, port)  # before the model's seconds of loading: a taken port fails at once
    served = tracking.served_model(model_uri, store)
    sock = _bind(host, port)  # again: taken meanwhile is the same one-line error, not uvicorn's traceback
    max_body = int(max_body_mb * 2**20)
    print(f"serving {model_uri} from {store} on http://{host}:{port}/invocations "
          f"(bodies up to {max_body_mb:g} MiB)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app(served.predict, served.shape, max_body), log_level="info"))
    server.run(sockets=[sock])
