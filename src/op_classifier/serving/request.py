"""A request body read into pixels: the fast scan of pixel arrays, JSON's checks, and b64 images decoded."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from op_classifier.data.images import ImageError, declared_pixels, decode_image
from op_classifier.serving.guard import BadRequest

INPUT_KEYS = ("instances", "inputs")  # TensorFlow Serving's row and columnar bodies: one input, the same here


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
    except ValueError:  # Python's guard against integers of thousands of digits (a 500 before, issue 25)
        raise BadRequest(400, "a number in the JSON has too many digits to be a pixel") from None


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
    files = [_b64_file(index, instance) for index, instance in enumerate(instances)]
    # Decoded, an image takes 3 bytes a pixel of its own size (9400x9400: 265 MB) before its resize:
    # a request may decode 2 x max_pixels in all, the process 4 x max_pixels at once (BUDGET).
    pixels = sum(declared_pixels(data) for data in files)
    if pixels > REQUEST_PIXELS_FACTOR * max_pixels:
        raise BadRequest(
            413,
            f"the images hold {pixels:,} pixels in all; this server decodes at most "
            f"{REQUEST_PIXELS_FACTOR * max_pixels:,} a request (data.max_image_pixels x {REQUEST_PIXELS_FACTOR})",
        )
    images = np.empty((len(instances), *shape), np.uint8)
    # Large images decode one request at a time, in their own lane: a core each would starve the
    # small requests (a 640x480 photo decodes in milliseconds, a 9400x9400 PNG in seconds).
    lane = LARGE_LANE if pixels > LARGE_PIXELS else contextlib.nullcontext()
    with BUDGET.reserve(pixels, PROCESS_PIXELS_FACTOR * max_pixels), lane:
        for index, data in enumerate(files):
            try:
                images[index] = decode_image(data, size, max_pixels)
            except ImageError as error:
                raise BadRequest(400, f"instance {index}: {error}") from None
    return images


def _b64_file(index: int, instance: dict) -> bytes:
    """The image file's bytes of one {"b64": ...} instance, or a BadRequest naming it."""
    value = instance.get("b64") if len(instance) == 1 else None
    if not isinstance(value, str):
        raise BadRequest(400, f'instance {index} is not {{"b64": "<base64 of an image file>"}}')
    try:
        data = base64.b64decode((value + "=" * (-len(value) % 4)).translate(_URL_SAFE), validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise BadRequest(400, f"instance {index}: the b64 value is not base64") from None
    if not data:
        raise BadRequest(400, f"instance {index}: the b64 value is empty, not an image")
    return data


class PixelBudget:
    """Source pixels being decoded now across all requests: one that would pass the limit waits for none,
    it is answered 503 at once (6 requests of two 9400x9400 PNGs took the server from 1.5 to 4.8 GB)."""

    def __init__(self) -> None:
        self.used = 0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def reserve(self, pixels: int, limit: int) -> Iterator[None]:
        """Hold pixels of the budget while decoding; a BadRequest 503 when they do not fit now."""
        with self.lock:
            if self.used and self.used + pixels > limit:
                raise BadRequest(503, "busy decoding other large images: try again in a moment")
            self.used += pixels
        try:
            yield
        finally:
            with self.lock:
                self.used -= pixels


BUDGET = PixelBudget()
LARGE_PIXELS = 16 * 2**20  # a request decoding more pixels than this (16 MP) waits for the large lane
LARGE_LANE = threading.Lock()
REQUEST_PIXELS_FACTOR = 2  # a request's images: at most twice data.max_image_pixels in all
PROCESS_PIXELS_FACTOR = 4  # all requests decoding at once: four times (about 1 GB of pixels at the default)


def max_images(max_body: int, shape: tuple[int, ...]) -> int:
    """How many b64 images one request may decode: 8 times the body limit as uint8 pixels (1,380 of 180x180
    at 16 MiB), about the memory that a body of pixels at the limit takes once parsed."""
    return max(1, 8 * max_body // math.prod(shape))
