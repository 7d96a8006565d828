"""What the package's self-contained HTML pages share (predict's report, evaluate's error gallery): names shown
so that they cannot forge a line, then HTML-escaped; one colour per class; images embedded as base64 JPEGs."""

from __future__ import annotations

import base64
import colorsys
import html
import io
from collections.abc import Sequence

from PIL import Image

# Tableau 10: distinct, colour-blind friendlier than the defaults, pleasant on white.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac")


def shown(text: str) -> str:
    """text as it may be printed on one line: a byte that is no UTF-8 as \\xff, a control character as Python
    writes it in a string (\\n, \\x1b); anything printable as it is."""
    if text.isprintable():
        return text
    try:  # a file name's bytes that are no UTF-8 come as lone surrogates (os.fsdecode): show the bytes
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates of another origin: escaped below like any control character
        pass
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def page_text(value: str) -> str:
    """A name as page text (or an attribute's value): shown as predict prints it, then HTML-escaped."""
    return html.escape(shown(value))


def class_colours(classes: Sequence[str]) -> list[str]:
    """One fixed colour per class, by its position in the model's output."""
    return [PALETTE[i] if i < len(PALETTE) else _extra_colour(i) for i in range(len(classes))]


def _extra_colour(index: int) -> str:
    # Golden-angle hue steps keep any number of further classes apart.
    red, green, blue = colorsys.hls_to_rgb((index * 0.381966) % 1.0, 0.55, 0.55)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def ink(colour: str) -> str:
    """Dark or white text, whichever reads better on the colour."""
    red, green, blue = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#1f2328" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.62 else "#ffffff"


def jpeg_base64(image: Image.Image, side: int, quality: int) -> str:
    """An RGB image shrunk to fit side x side (never enlarged) as a base64 JPEG, for a data: URI."""
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality, optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
