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
       a b64 value that is not base64 or not an image (the message names the instance), b64 mixed with pixels
  404  another model name under /v1/models/ (or an unknown path)
  413  a body over --max-body-mb: refused from its Content-Length before it is read, or as soon as a
       chunked body passes the limit; never kept in memory (see _sends_regardless for when the rest is read).
       More b64 images in one request than max_images (8 times the limit as decoded pixels)
  415  a Content-Type other than application/json (missing included), or a charset other than UTF-8

This module imports neither MLflow nor TensorFlow: tracking/served.py loads the model when serving starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import gc
import json
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson

from op_classifier import config, tracking
from op_classifier.config import CHAMPION
from op_classifier.data.images import ImageError, decode_image
from op_classifier.defaults import HOST, MAX_BODY_MB, SERVE_PORT
from op_classifier.errors import DataError, OpClassifierError
from op_classifier.tracking import ModelStore, Served

# 16 MiB: about 30 images of 180x180 as JSON integers (0.49 MiB each), which json.loads turns into
# about 6 times as many bytes of Python objects (8 for floats): a request peaks near 100-130 MiB of
# memory. MLflow's scoring server had no limit; raise this one with --max-body-mb for larger batches.
MESSAGE_MAX = 200  # characters of an error message, at most
MAX_PIXELS = 89_478_485  # of one b64 image: data.max_image_pixels' default (Pillow's decompression-bomb limit)
INPUT_KEYS = ("instances", "inputs")  # TensorFlow Serving's row and columnar bodies: one input, the same here

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeError(OpClassifierError):
    """The server cannot start."""


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and a short message that quotes none of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def default_model(cfg: config.Config) -> str:
    """models:/<tracking.model_name>@champion."""
    return f"models:/{cfg.tracking.model_name}@{CHAMPION}"


def check_registered(model_uri: str, store: ModelStore, cfg: config.Config) -> str | None:
    """Fail in one line when a models:/<name>@<alias> URI points to nothing in the store; else its version."""
    scheme, _, rest = model_uri.partition(":/")
    name, _, alias = rest.strip("/").partition("@")
    if scheme != "models" or not alias:
        return None  # other URIs (versions, runs:/, paths): loading the model reports those
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
    scheme, _, rest = model_uri.partition(":/")
    if scheme != "models":
        return cfg.tracking.model_name, "1"
    name = rest.strip("/").partition("@")[0]
    name, _, number = name.partition("/")
    return name, alias_version or (number if number.isdigit() else "1")


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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
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
        headers = [
            (k, v) for k, v in self.start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
        ]
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


_BLANKS = b" \t\n\r"  # JSON's whitespace
_HEAD = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"(instances|inputs)"[ \t\n\r]*:')
_DIGITS = b"0123456789"


def pixel_array(body: bytes, shape: tuple[int, ...]) -> tuple[str, np.ndarray] | None:
    """(key, int16 (batch, *shape) array) of the commonest body, `{"instances": <integers>}`; else None.

    What orjson and np.asarray make of such a body, read straight from its bytes (bytes.translate and
    a few numpy passes over them) without the 32,000 Python lists an image makes as JSON. Only a body
    of one key whose array holds non-negative integers of at most 3 digits, laid out exactly as
    (batch, *shape), is read here; anything else (floats, other keys, another shape, bad JSON) is None,
    for read_request's general path to read or refuse with its messages.
    """
    head = _HEAD.match(body)
    end = len(body.rstrip(_BLANKS))
    if head is None or end == 0 or body[end - 1] != ord("}"):
        return None
    text = body[head.end() : end - 1]
    compact = text.translate(None, _BLANKS)
    skeleton = compact.translate(None, _DIGITS)  # the brackets and commas
    if skeleton.translate(None, b"[],"):  # anything else: signs, decimals, strings, objects
        return None
    frame, numbers = _layout(shape)
    images, extra = divmod(len(skeleton) - 1, len(frame) + 1)  # "[" image ("," image)* "]"
    if images < 1 or extra or skeleton != b"[" + b",".join([frame] * images) + b"]":
        return None
    raw = np.frombuffer(compact, np.uint8)
    digit = ((raw - ord("0")) < 10).view(np.int8)  # uint8: the bytes below "0" wrap round to 246 and up
    edges = np.flatnonzero(np.diff(digit))  # before each number's first digit, at its last
    first, last = edges[0::2] + 1, edges[1::2]  # the text starts and ends with a bracket: edges pair up
    if len(first) != images * numbers or len(last) != len(first):
        return None
    # With the brackets and commas as the layout's, each number between "[" or "," and "," or "]" puts
    # one in each place the layout has one, and nowhere else.
    if not (np.isin(raw[first - 1], _OPENERS).all() and np.isin(raw[last + 1], _CLOSERS).all()):
        return None
    if len(compact) != len(text) and _runs(np.frombuffer(text, np.uint8)) != len(first):
        return None  # blanks between two digits: "1 2" is no JSON, and would read as 12 once compacted
    length = last - first + 1
    if length.max() > 3 or ((raw[first] == ord("0")) & (length > 1)).any():  # 1000 and up; JSON has no "07"
        return None
    value = raw[last].astype(np.int16) - ord("0")
    for place, scale in ((1, 10), (2, 100)):  # last - 2 is -1 at most, for a number of one digit at 1
        value += (length > place) * (raw[last - place].astype(np.int16) - ord("0")) * scale
    return head.group(1).decode(), value.reshape(images, *shape)


_OPENERS = np.frombuffer(b"[,", np.uint8)
_CLOSERS = np.frombuffer(b",]", np.uint8)


def _runs(raw: np.ndarray) -> int:
    """How many runs of digits the bytes hold."""
    digit = (raw - ord("0")) < 10
    return int(digit[0]) + int(np.count_nonzero(digit[1:] & ~digit[:-1])) if raw.size else 0


@functools.lru_cache(maxsize=4)
def _layout(shape: tuple[int, ...]) -> tuple[bytes, int]:
    """The brackets and commas of one image of shape as JSON ("[[[,,],...],...]" for (S, S, 3)), its numbers."""
    text = ""
    for size in reversed(shape):
        text = "[" + ",".join([text] * size) + "]"
    return text.encode(), math.prod(shape)


def read_request(body: bytes, shape: tuple[int, ...]) -> tuple[str, Any]:
    """(the input key, "instances" or "inputs"; its value, unchecked) of a request body, or a BadRequest.

    A body of integer pixels laid out as (batch, *shape) is read by pixel_array, straight into numpy;
    any other is parsed by orjson (which refuses nesting past 1,024 levels itself). A list of objects
    (b64 images) is returned as it is, for decoded_images to check each one; anything else is scanned
    first (nesting, true/false: what np.asarray would take for pixels), and parsed by json where orjson
    refused it, for json's reading (NaN) and its messages.
    """
    fast = pixel_array(body, shape)
    if fast is not None:
        return fast
    try:
        document = orjson.loads(body)  # 2-3 times json.loads' speed
    except orjson.JSONDecodeError:
        document = None
    keys = [key for key in INPUT_KEYS if isinstance(document, dict) and key in document]
    if len(keys) == 1 and _all_objects(document[keys[0]]):
        return keys[0], document[keys[0]]
    expected = f"(batch, {', '.join(map(str, shape))}) raw RGB pixel values 0..255"
    needed = len(shape) + 2  # the object, the batch, then one array per axis of an image
    depth, has_bool = scan_json(body)
    if depth > needed:
        raise BadRequest(400, f'the JSON nests {depth} levels deep; {{"instances": {expected}}} needs {needed}')
    if document is None:
        document = _loads(body)
        keys = [key for key in INPUT_KEYS if isinstance(document, dict) and key in document]
    if len(keys) != 1:
        raise BadRequest(
            400,
            f'the body must be a JSON object with "instances" (or "inputs", not both): {expected}'
            ' or {"b64": image bytes} each',
        )
    instances = document[keys[0]]
    if has_bool and _has_bool(instances):
        raise BadRequest(400, f"{keys[0]} contain true/false, not pixels: expected {expected}")
    return keys[0], instances


def _all_objects(instances: Any) -> bool:
    """Whether instances is a non-empty list of JSON objects only (b64 images, at depth 3)."""
    return isinstance(instances, list) and bool(instances) and all(isinstance(item, dict) for item in instances)


def read_instances(body: bytes, shape: tuple[int, ...]) -> Any:
    """The "instances" (or "inputs") of a request body (unchecked values), or a BadRequest saying why not."""
    return read_request(body, shape)[1]


def _loads(body: bytes) -> Any:
    """Python's json.loads of a body: what orjson refuses may still be JSON that Python reads (NaN)."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise BadRequest(400, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:  # cannot happen below the nesting read_request allows; the last line of defence
        raise BadRequest(400, "the JSON nests too deep") from None


_URL_SAFE = str.maketrans("-_", "+/")


def decoded_images(instances: Any, shape: tuple[int, ...], max_images: int, max_pixels: int) -> np.ndarray | None:
    """uint8 (batch, *shape) images of instances given as {"b64": ...} objects; None for pixel arrays.

    TensorFlow Serving's form for binary data: each instance {"b64": "<base64 of the image file's bytes>"}
    (standard or URL-safe alphabet, padding optional), decoded by images.decode_image as prepare decodes
    a file: by content, EXIF orientation, any mode to RGB, the decompression-bomb guard, the bilinear
    resize to the model's S x S. One kind per request: objects mixed with pixel arrays are refused.
    """
    if not isinstance(instances, list) or not any(isinstance(item, dict) for item in instances):
        return None
    if not all(isinstance(item, dict) for item in instances):
        raise BadRequest(400, 'instances mix {"b64": ...} objects with pixel arrays: send one kind per request')
    size, width, channels = shape if len(shape) == 3 else (0, 1, 0)
    if size != width or channels != 3:
        raise BadRequest(400, f"this model takes {shape} arrays, not images: send pixel arrays, not b64")
    if len(instances) > max_images:
        raise BadRequest(
            413,
            f"{len(instances)} images in one request; this server decodes at most {max_images} "
            "(--max-body-mb scales it)",
        )
    images = np.empty((len(instances), *shape), np.uint8)
    for index, instance in enumerate(instances):
        value = instance.get("b64") if len(instance) == 1 else None
        if not isinstance(value, str):
            raise BadRequest(400, f'instance {index} is not {{"b64": "<base64 of an image file>"}}')
        try:
            data = base64.b64decode((value + "=" * (-len(value) % 4)).translate(_URL_SAFE), validate=True)
        except ValueError:  # binascii.Error, and non-ASCII text
            raise BadRequest(400, f"instance {index}: the b64 value is not base64") from None
        if not data:
            raise BadRequest(400, f"instance {index}: the b64 value is empty, not an image")
        try:
            images[index] = decode_image(data, size, max_pixels)
        except ImageError as error:
            raise BadRequest(400, f"instance {index}: {error}") from None
    return images


def max_images(max_body: int, shape: tuple[int, ...]) -> int:
    """How many b64 images one request may decode: 8 times the body limit as uint8 pixels (1,380 of 180x180
    at 16 MiB), about the memory that a body of pixels at the limit takes once parsed."""
    return max(1, 8 * max_body // math.prod(shape))


def score(
    served: Served, body: bytes, *, tf_serving: bool = False, most: int | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[int, bytes]:
    """(HTTP status, JSON answer) to a request body: the probabilities, or a short error.

    tf_serving: the answer of TensorFlow Serving's path (a columnar "inputs" body gets "outputs");
    most: b64 images a request may hold (default: max_images at MAX_BODY_MB); max_pixels: of each one.
    """
    most = max_images(MAX_BODY_MB * 2**20, served.shape) if most is None else most
    with _collection_paused():
        return _score(served, body, tf_serving, most, max_pixels)


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


def _score(served: Served, body: bytes, tf_serving: bool, most: int, max_pixels: int) -> tuple[int, bytes]:
    try:
        key, instances = read_request(body, served.shape)
        images = decoded_images(instances, served.shape, most, max_pixels)
        probabilities = served.predict(instances) if images is None else served.predict_images(images)
    except BadRequest as refused:
        return refused.status, error_body(refused.status, str(refused))
    except DataError as bad:  # the pixel checks of tracking.served.ServedModel.predict
        return 400, error_body(400, str(bad))
    except Exception as error:  # the model itself failed: logged whole, answered short
        log.exception("prediction failed")
        return 500, error_body(500, f"prediction failed ({type(error).__name__}); see the server's log")
    # TensorFlow Serving answers the columnar "inputs" with "outputs"; MLflow's /invocations, "predictions".
    out = "outputs" if tf_serving and key == "inputs" else "predictions"
    return 200, orjson.dumps({out: np.asarray(probabilities).tolist()})


def app(served: Served, max_body: int, name: str, version: str = "1", max_pixels: int = MAX_PIXELS) -> ASGIApp:
    """The scoring app, guarded: POST /invocations and TensorFlow Serving's /v1/models/<name>:predict,
    GET /v1/models/<name> (its model status), /ping and /health."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    most = max_images(max_body, served.shape)
    elsewhere = f"this server serves the model {name}, version {version}"

    async def respond(request: Request, tf_serving: bool) -> Response:
        # Parsing and predicting run in a thread: /ping answers while a large request is on.
        status, body = await asyncio.to_thread(
            score, served, await request.body(), tf_serving=tf_serving, most=most, max_pixels=max_pixels
        )
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


def run(
    model_uri: str | None = None,
    host: str = HOST,
    port: int = SERVE_PORT,
    max_body_mb: float = MAX_BODY_MB,
    overrides: Sequence[str] = (),
) -> None:
    """Check the limit, the model and the port, load the model, then serve until stopped (Ctrl-C, SIGTERM)."""
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise ServeError(f"--max-body-mb must be a positive number of MiB, not {max_body_mb}")
    import uvicorn

    cfg = config.validate(config.compose(tuple(overrides)))
    store = tracking.open_store(cfg.tracking)
    model_uri = model_uri or default_model(cfg)
    version = check_registered(model_uri, store, cfg)
    name, version = served_name(model_uri, version, cfg)
    check_port(host, port)  # before the model's seconds of loading: a taken port fails at once
    served = store.served(model_uri)
    sock = _bind(host, port)  # again: taken meanwhile is the same one-line error, not uvicorn's traceback
    max_body = int(max_body_mb * 2**20)
    print(
        f"serving {model_uri} from {store.uri} on http://{host}:{port}/invocations and "
        f"/v1/models/{name}:predict (bodies up to {max_body_mb:g} MiB)",
        flush=True,
    )
    scoring = app(served, max_body, name, version, cfg.data.max_image_pixels)
    server = uvicorn.Server(uvicorn.Config(scoring, log_level="info"))
    server.run(sockets=[sock])
