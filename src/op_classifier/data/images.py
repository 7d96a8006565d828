"""Decode one image file into the square uint8 RGB array the model sees (prepare and predict share it)."""

from __future__ import annotations

import codecs
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from op_classifier.errors import DataError, first_line

# Formats with a magic number and a decoder that needs no outside program: EPS would run Ghostscript
# on untrusted input, and TGA has no signature, so random bytes could pass for one.
_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "AVIF")
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_REASON_CHARS = 160
_START_BYTES = 512  # what Pillow's format checks look at (each reads at most the first few dozen)
MAX_FILE_BYTES = 256 * 2**20  # data.max_file_mb's default: larger image files are refused unread


class ImageError(DataError):
    """One file cannot be used as an image; the message is the short reason."""


def load_image(path: Path, size: int, max_pixels: int, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Decode a file by its content into a uint8 (size, size, 3) RGB array, or raise ImageError."""
    return decode_image(read_file(path, max_bytes), size, max_pixels)


def declared_pixels(data: bytes) -> int:
    """The pixels an image file's header says it holds (width x height), read without decoding; 0 when
    the header cannot be read (decode_image then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_formats()) as image:
            width, height = image.size
    except Exception:  # anything Pillow cannot identify: decode_image gives the reason
        return 0
    return width * height


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Decode image bytes into a uint8 (size, size, 3) RGB array, or raise ImageError."""
    if not data:
        raise ImageError("empty file")
    # Pillow's own guard warns above Image.MAX_IMAGE_PIXELS; as an error it refuses the file here
    # instead of changing that global for every other user of Pillow in the process.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_formats())
        except UnidentifiedImageError:
            raise ImageError(_not_an_image(data)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(_bomb_reason(error)) from None
        except Exception as error:  # any header Pillow cannot parse is one bad file, not a crash
            raise ImageError(f"cannot read image header: {first_line(error, _REASON_CHARS)}") from None
        with image:
            _check_pixels(image.size, max_pixels)
            try:
                return _to_array(image, size)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
                raise ImageError(_bomb_reason(error)) from None
            except Exception as error:  # decoders raise many types on corrupt data; all mean "skip it"
                raise ImageError(f"cannot decode {image.format}: {first_line(error, _REASON_CHARS)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency over white, 16-bit and float scaled to 0..255."""
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_scaled_to_8bit(image)).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in _FORMATS if name in Image.OPEN)


def read_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, read only once it is known to be one, at most max_bytes long, and to start
    as an image format does: a FIFO, a device or a socket would block or never end, and a huge file
    of anything else would be read whole only to be refused."""
    try:
        # O_NONBLOCK: a FIFO opens without waiting for a writer (it is then refused unread).
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(f"not a regular file ({_special_kind(info.st_mode)}); not read")
            if info.st_size > max_bytes:
                raise ImageError(f"{info.st_size:,} bytes, over the {max_bytes:,}-byte limit (data.max_file_mb); not read")
            start = handle.read(_START_BYTES)
            if start and not any(Image.OPEN[name][1](start) for name in _formats() if Image.OPEN[name][1]):
                raise ImageError(_not_an_image(start))
            return start + handle.read(max_bytes - len(start))
    except OSError as error:
        raise ImageError(f"cannot read file: {error.strerror or error}") from None


def _special_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a folder" if stat.S_ISDIR(mode) else "not a file")


def _check_pixels(image_size: tuple[int, int], max_pixels: int) -> None:
    width, height = image_size
    if width * height > max_pixels:
        raise ImageError(
            f"too large: {width}x{height} = {width * height:,} pixels, over data.max_image_pixels ({max_pixels:,})"
        )


def _to_array(image: Image.Image, size: int) -> np.ndarray:
    image.seek(0)  # the first frame of an animation
    # JPEG can decode at 1/2, 1/4 or 1/8 scale (never below `size`): far faster on large photos.
    image.draft(None, (size, size))
    image.load()  # decode now, so a truncated file fails inside the caller's try
    ImageOps.exif_transpose(image, in_place=True)
    rgb = to_rgb(image)
    # Aspect-ignoring bilinear resize, as keras' image_dataset_from_directory did.
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _scaled_to_8bit(image: Image.Image) -> np.ndarray:
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=0.0))
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        scaled = pixels / 257.0  # the full 16-bit range onto 0..255, as 8-bit tools show it
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = pixels * 255.0
    elif high > low:
        scaled = (pixels - low) / (high - low) * 255.0  # no known range: stretch what is there
    else:
        scaled = pixels
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _bomb_reason(error: BaseException) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(found.group(1)):,} pixels, " if found else ""
    return f"too large: {pixels}refused by Pillow's decompression-bomb guard"


def _not_an_image(data: bytes) -> str:
    start = data[:1024]
    if b"\x00" not in start:
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
        except UnicodeDecodeError:
            text = None
        if text is not None:
            kind = "an HTML page" if "<html" in text.lower() or "<!doctype" in text.lower() else "a text file"
            return f"not an image ({kind})"
    return "not an image (unknown or unsupported format)"
