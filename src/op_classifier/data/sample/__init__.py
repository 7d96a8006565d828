"""The built-in synthetic "Straw Hat" image set: deterministic One Piece look-alikes drawn with Pillow.

Each character keeps the canonical silhouette and marks from the anime (Luffy's straw hat and scar,
Zoro's short green hair, three earrings and sword hilts, Nami's long hair and shoulder tattoo,
Sanji's hair over one eye, curled eyebrow, suit and cigarette), while colour is made an unreliable
cue on purpose: hue jitter, outfit colour swaps, colour-graded and black-and-white manga images,
colourful backgrounds and occluders. A model has to learn shapes to do well.

Every image is rendered from its own random generator seeded with (seed, class, index), so the
bytes do not depend on the number of workers or their order, and regeneration with the same
arguments reproduces the folder's hash exactly (for a pinned Pillow).
"""

from __future__ import annotations

import colorsys
import csv
import io
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from tqdm import tqdm

from op_classifier.errors import DataError
from op_classifier.files import chunk_size, cpu_count, staged_output, worker_pool

CLASSES = ("Luffy", "Nami", "Sanji", "Zoro")
PER_CLASS = 400
SEED = 0
SIZE = 180
SCENES_DIR = "scenes"
LABELS_FILE = "labels.csv"

SUPERSAMPLE = 2  # figures are drawn at 2x and reduced: cheap anti-aliasing
MANGA_SHARE = 0.30  # black-and-white images, where colour is no cue at all
GRADE_SHARE = 0.20  # colour images whose hues are rotated wholesale (filters, odd lighting)
OUTFIT_SHARE = 0.35  # colour images with a non-canonical outfit colour
INK = (25, 20, 25)

RGB = tuple[int, int, int]
Point = tuple[float, float]
Job = tuple[int, int, int]  # (seed, class index or len(CLASSES) for a scene, image index)


# --------------------------------------------------------------------------------------------
# Colours


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _jitter(rgb: RGB, rng: np.random.Generator, hue: float, sat: float = 0.15, val: float = 0.12) -> RGB:
    """The colour with hue shifted by up to ±hue turns and saturation/value scaled a little."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return _hsv(
        h + rng.uniform(-hue, hue),
        s * rng.uniform(1 - sat, 1 + sat),
        v * rng.uniform(1 - val, 1 + val),
    )


def _any_colour(rng: np.random.Generator) -> RGB:
    """A random vivid-to-dull colour; the palette of backgrounds, occluders and swapped outfits."""
    return _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(min(255, max(0, round(c * factor))) for c in rgb)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Drawing in face units: (0, 0) is the face centre, the face is 1 unit tall


@dataclass
class Pen:
    """Draws shapes given in face units onto a layer."""

    draw: ImageDraw.ImageDraw
    cx: float
    cy: float
    f: float  # the face's height in layer pixels

    def pts(self, points: Sequence[Point]) -> list[Point]:
        return [(self.cx + x * self.f, self.cy + y * self.f) for x, y in points]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = self.pts([(x0, y0), (x1, y1)])
        return [a, b, max(a, c), max(b, d)]

    @property
    def stroke(self) -> int:
        # Outlines scale with the figure, so shapes read the same at every size
        return max(1, round(0.03 * self.f))

    def ellipse(self, box: Sequence[float], fill: RGB | None, outline: bool = True, thin: bool = False) -> None:
        width = max(1, self.stroke // 2) if thin else self.stroke
        self.draw.ellipse(self.box(*box), fill=fill, outline=INK if outline else None, width=width)

    def polygon(self, points: Sequence[Point], fill: RGB | None, outline: bool = True) -> None:
        self.draw.polygon(self.pts(points), fill=fill, outline=INK if outline else None, width=self.stroke)

    def line(self, points: Sequence[Point], fill: RGB, width: float = 0.03) -> None:
        self.draw.line(self.pts(points), fill=fill, width=max(1, round(width * self.f)), joint="curve")

    def chord(self, box: Sequence[float], start: float, end: float, fill: RGB | None) -> None:
        self.draw.chord(self.box(*box), start, end, fill=fill, outline=INK, width=self.stroke)

    def arc(self, box: Sequence[float], start: float, end: float, width: float = 0.03) -> None:
        self.draw.arc(self.box(*box), start, end, fill=INK, width=max(1, round(width * self.f)))

    def shifted(self, dx: float, dy: float = 0.0) -> Pen:
        return Pen(self.draw, self.cx + dx * self.f, self.cy + dy * self.f, self.f)


def _curve(fn: Callable[[float], Point], n: int = 24) -> list[Point]:
    return [fn(t / (n - 1)) for t in range(n)]


def _face_outline() -> list[Point]:
    # A rounded skull and a narrower, pointed anime chin
    points = []
    for step in range(40):
        a = 2 * math.pi * step / 40
        x, y = 0.4 * math.cos(a), 0.5 * math.sin(a)
        if y > 0:
            x *= 1 - 0.45 * (y / 0.5) ** 2
        points.append((x, y))
    return points


FACE = _face_outline()
TORSO = [(-1.05, 2.0), (-1.0, 0.98), (-0.85, 0.8), (-0.25, 0.62), (0.25, 0.62), (0.85, 0.8), (1.0, 0.98), (1.05, 2.0)]


def _spiral(cx: float, cy: float, radius: float, turns: float = 2.2) -> list[Point]:
    """An Archimedean spiral from its centre outwards: Sanji's eyebrow curl."""
    return _curve(
        lambda t: (
            cx + radius * t * math.cos(t * turns * 2 * math.pi),
            cy + radius * t * math.sin(t * turns * 2 * math.pi),
        ),
        40,
    )


# --------------------------------------------------------------------------------------------
# Shared body parts


@dataclass
class Look:
    """The colours and expression of one drawn character."""

    skin: RGB
    hair: RGB
    cloth: RGB
    accent: RGB
    eyes: str  # open | closed | happy | angry
    mouth: str  # grin | smile | flat | open | frown | shout
    turn: float  # head turn: facial features shift sideways, in face units


def _body(p: Pen, look: Look, shoulders_bare: bool = False) -> None:
    p.polygon([(-0.14, 0.3), (0.14, 0.3), (0.16, 0.8), (-0.16, 0.8)], look.skin)
    p.polygon(TORSO, look.skin if shoulders_bare else look.cloth)


def _head(p: Pen, look: Look) -> None:
    for side in (-1, 1):
        p.ellipse((side * 0.4 - 0.07, -0.1, side * 0.4 + 0.07, 0.14), look.skin)
    p.polygon(FACE, look.skin)


def _eye(p: Pen, x: float, look: Look, style: str, side: int) -> None:
    y = -0.05
    if look.eyes in ("closed", "happy"):
        start, end = (200, 340) if look.eyes == "happy" else (20, 160)
        p.arc((x - 0.09, y - 0.06, x + 0.09, y + 0.06), start, end, 0.035)
        return
    if style == "narrow":  # Zoro, Sanji: sharp almond eyes
        p.polygon([(x - 0.1, y), (x - 0.02, y - 0.05), (x + 0.09, y - 0.02), (x + 0.02, y + 0.04)], (250, 250, 250))
        p.ellipse((x - 0.035, y - 0.04, x + 0.025, y + 0.03), INK, outline=False)
    else:  # Luffy, Nami: big round eyes
        h = 0.11 if style == "round" else 0.12
        p.ellipse((x - 0.075, y - h, x + 0.075, y + h * 0.8), (250, 250, 250))
        iris = look.accent if style == "lashes" else INK
        p.ellipse((x - 0.045, y - h * 0.6, x + 0.04, y + h * 0.7), iris, outline=False)
        p.ellipse((x - 0.025, y - h * 0.45, x + 0.0, y - h * 0.15), (255, 255, 255), outline=False)
        if style == "lashes":  # Nami's eyelashes flick outwards
            lash = [(x - 0.08 * side, y - h * 0.6), (x + 0.1 * side, y - h * 1.0), (x + 0.14 * side, y - h * 0.7)]
            p.line(lash, INK, 0.035)
    if look.eyes == "angry":
        p.line([(x - 0.1, y - 0.14 - 0.04 * side), (x + 0.1, y - 0.14 + 0.04 * side)], INK, 0.04)


def _eyes(p: Pen, look: Look, style: str, sides: Sequence[int] = (-1, 1)) -> None:
    for side in sides:
        _eye(p, side * 0.17, look, style, side)


def _brows(p: Pen, sides: Sequence[int] = (-1, 1), thick: float = 0.035) -> None:
    for side in sides:
        p.line([(side * 0.08, -0.2), (side * 0.25, -0.22)], INK, thick)


def _mouth(p: Pen, look: Look) -> None:
    y = 0.28
    if look.mouth == "grin":  # Luffy's signature wide open smile
        p.chord((-0.17, y - 0.12, 0.17, y + 0.12), 0, 180, (250, 250, 250))
        p.line([(-0.15, y + 0.03), (0.15, y + 0.03)], INK, 0.02)
    elif look.mouth == "smile":
        p.arc((-0.12, y - 0.1, 0.12, y + 0.04), 20, 160, 0.03)
    elif look.mouth == "flat":
        p.line([(-0.08, y), (0.08, y)], INK, 0.03)
    elif look.mouth == "open":
        p.ellipse((-0.06, y - 0.05, 0.06, y + 0.07), (120, 30, 40))
    elif look.mouth == "frown":
        p.arc((-0.1, y - 0.02, 0.1, y + 0.1), 200, 340, 0.03)
    else:  # shout
        p.ellipse((-0.12, y - 0.08, 0.12, y + 0.12), (110, 25, 35))
        p.ellipse((-0.07, y + 0.03, 0.07, y + 0.11), (230, 110, 120), outline=False)


def _nose(p: Pen) -> None:
    p.line([(0.0, 0.1), (0.025, 0.14)], INK, 0.025)


# --------------------------------------------------------------------------------------------
# The four characters


def _luffy(p: Pen, look: Look, rng: np.random.Generator) -> None:
    _body(p, look)
    # The open vest shows the chest, sometimes with the X-shaped scar
    p.polygon([(-0.2, 0.64), (0.2, 0.64), (0.36, 2.0), (-0.36, 2.0)], look.skin)
    if rng.random() < 0.5:
        p.line([(-0.15, 1.15), (0.15, 1.45)], (150, 60, 50), 0.04)
        p.line([(0.15, 1.15), (-0.15, 1.45)], (150, 60, 50), 0.04)
    p.ellipse((-0.5, -0.55, 0.5, 0.15), look.hair)  # messy black hair behind the face
    _head(p, look)
    f = p.shifted(look.turn)
    _eyes(f, look, "round")
    _brows(f)
    # The scar under his left eye (the viewer's right): two short strokes
    f.line([(0.08, 0.1), (0.27, 0.07)], (140, 30, 30), 0.04)
    f.line([(0.13, 0.04), (0.2, 0.14)], (140, 30, 30), 0.035)
    _mouth(f, look)
    _nose(f)
    spikes = [
        (-0.45, -0.3),
        (-0.36, -0.12),
        (-0.28, -0.3),
        (-0.16, -0.16),
        (-0.05, -0.32),
        (0.06, -0.17),
        (0.16, -0.32),
        (0.27, -0.14),
        (0.34, -0.3),
        (0.45, -0.1),
        (0.44, -0.42),
    ]
    p.polygon([(-0.44, -0.42)] + spikes, look.hair)
    _straw_hat(p, look.accent, rng)


def _straw_hat(p: Pen, band: RGB, rng: np.random.Generator) -> None:
    straw = _jitter((236, 200, 95), rng, 0.02)
    lift = rng.uniform(-0.05, 0.05)
    p.ellipse((-0.92, -0.58 + lift, 0.92, -0.3 + lift), straw)  # the wide brim
    for r in (0.75, 0.6):
        p.arc((-r, -0.52 + lift, r, -0.36 + lift), 0, 180, 0.015)
    p.chord((-0.48, -1.0 + lift, 0.48, -0.24 + lift), 180, 360, straw)  # the dome
    p.polygon([(-0.48, -0.62 + lift), (0.48, -0.62 + lift), (0.48, -0.5 + lift), (-0.48, -0.5 + lift)], band)


def _zoro(p: Pen, look: Look, rng: np.random.Generator) -> None:
    _sword_hilts(p, rng)
    _body(p, look)
    p.polygon([(-0.2, 0.64), (0.2, 0.64), (0.0, 0.95)], look.skin)  # open collar
    p.polygon([(-1.03, 1.45), (1.03, 1.45), (1.05, 2.0), (-1.05, 2.0)], look.accent)  # haramaki sash
    p.line([(-1.0, 1.6), (1.0, 1.6)], _shade(look.accent, 0.7), 0.03)
    _head(p, look)
    f = p.shifted(look.turn)
    _eyes(f, look, "narrow")
    _brows(f, thick=0.05)
    _mouth(f, look)
    _nose(f)
    # Short cropped hair hugging the skull, with a short jagged hairline
    crown = _curve(lambda t: (-0.45 + 0.9 * t, -0.34 - 0.3 * math.sin(math.pi * t)), 12)
    fringe = [
        (0.45, -0.22),
        (0.3, -0.3),
        (0.18, -0.24),
        (0.05, -0.32),
        (-0.08, -0.25),
        (-0.2, -0.32),
        (-0.33, -0.24),
        (-0.45, -0.22),
    ]
    p.polygon(crown + fringe, look.hair)
    # Three gold drop earrings on his left ear (the viewer's right)
    gold = (235, 190, 40)
    for k in range(3):
        x = 0.38 + 0.075 * k
        p.ellipse((x - 0.035, 0.1 + 0.03 * k, x + 0.035, 0.36 + 0.03 * k), gold, thin=True)


def _sword_hilts(p: Pen, rng: np.random.Generator) -> None:
    """Three katana hilts over his right shoulder (the viewer's left), fanned out."""
    colours = [(245, 245, 240), (40, 40, 45), (150, 30, 40)]
    spread = rng.uniform(0.12, 0.2)
    for k, colour in enumerate(colours):
        a = math.radians(-115 + (k - 1) * math.degrees(spread))
        x0, y0 = -0.7, 1.1
        x1, y1 = x0 + 1.05 * math.cos(a), y0 + 1.05 * math.sin(a)
        p.line([(x0, y0), (x1, y1)], INK, 0.16)
        p.line([(x0, y0), (x1, y1)], colour, 0.1)
        gx, gy = x0 + 0.55 * math.cos(a), y0 + 0.55 * math.sin(a)
        p.ellipse((gx - 0.12, gy - 0.06, gx + 0.12, gy + 0.06), (200, 170, 60))  # the guard (tsuba)


def _nami(p: Pen, look: Look, rng: np.random.Generator) -> None:
    # Long hair falls behind her back, well past the shoulders
    hem = _curve(lambda t: (0.7 - 1.4 * t, 1.45 + 0.08 * math.sin(6 * math.pi * t)), 16)
    p.polygon([(-0.55, -0.3), (-0.4, -0.6), (0.0, -0.66), (0.4, -0.6), (0.55, -0.3), (0.7, 1.45)] + hem, look.hair)
    _body(p, look, shoulders_bare=True)
    top = look.cloth
    p.polygon([(-0.6, 1.12), (0.6, 1.12), (0.72, 2.0), (-0.72, 2.0)], top)
    if rng.random() < 0.6:  # her striped top
        for y in (1.3, 1.5, 1.7, 1.9):
            p.line([(-0.66, y), (0.66, y)], (245, 245, 245), 0.06)
    for side in (-1, 1):
        p.line([(side * 0.4, 1.12), (side * 0.32, 0.7)], top, 0.04)
    _tattoo(p, 0.84, 1.12)
    _head(p, look)
    f = p.shifted(look.turn)
    _eyes(f, look, "lashes")
    _mouth(f, look)
    _nose(f)
    # Side-parted bangs, then a long lock over her right shoulder (the viewer's left)
    p.polygon(
        [
            (-0.46, -0.1),
            (-0.45, -0.45),
            (-0.1, -0.62),
            (0.35, -0.55),
            (0.47, -0.2),
            (0.3, -0.36),
            (0.1, -0.24),
            (-0.05, -0.38),
            (-0.25, -0.22),
            (-0.35, -0.34),
        ],
        look.hair,
    )
    p.polygon([(-0.47, -0.2), (-0.36, 0.1), (-0.5, 0.7), (-0.72, 1.35), (-0.86, 0.9), (-0.6, 0.3)], look.hair)


def _tattoo(p: Pen, x: float, y: float) -> None:
    """Her blue tattoo on the left shoulder: a pinwheel with a swirl."""
    blue = (35, 90, 200)
    for k in range(4):
        a = k * math.pi / 2
        tip = (x + 0.15 * math.cos(a), y + 0.15 * math.sin(a))
        side = (x + 0.1 * math.cos(a + 0.9), y + 0.1 * math.sin(a + 0.9))
        p.polygon([(x, y), tip, side], blue, outline=False)
    p.line(_spiral(x, y, 0.09, 1.5), blue, 0.025)


def _sanji(p: Pen, look: Look, rng: np.random.Generator) -> None:
    p.ellipse((-0.5, -0.6, 0.5, 0.3), look.hair)  # hair behind the face, down to the jaw
    _body(p, look)
    shirt = (235, 235, 240) if rng.random() < 0.6 else (120, 160, 220)
    p.polygon([(-0.25, 0.62), (0.25, 0.62), (0.0, 1.6)], shirt)
    p.polygon([(-0.25, 0.62), (-0.05, 1.6), (-0.45, 1.0)], _shade(look.cloth, 1.4))  # lapels
    p.polygon([(0.25, 0.62), (0.05, 1.6), (0.45, 1.0)], _shade(look.cloth, 1.4))
    p.polygon([(-0.06, 0.66), (0.06, 0.66), (0.04, 0.76), (-0.04, 0.76)], look.accent)  # the tie
    p.polygon([(-0.04, 0.76), (0.04, 0.76), (0.08, 1.4), (0.0, 1.5), (-0.08, 1.4)], look.accent)
    _head(p, look)
    f = p.shifted(look.turn)
    _eyes(f, look, "narrow", sides=(-1,))
    # The curled eyebrow: a stroke ending in a spiral over the visible eye
    f.line([(-0.3, -0.2), (-0.12, -0.23)], INK, 0.035)
    f.line(_spiral(-0.1, -0.2, 0.06), INK, 0.03)
    _mouth(f, look)
    _nose(f)
    f.polygon([(-0.05, 0.42), (0.05, 0.42), (0.0, 0.5)], look.hair)  # goatee
    f.line([(0.08, 0.3), (0.32, 0.38)], (245, 245, 245), 0.04)  # cigarette
    f.line([(0.3, 0.37), (0.34, 0.39)], (230, 80, 30), 0.045)
    f.line(_curve(lambda t: (0.34 + 0.06 * math.sin(5 * t), 0.34 - 0.35 * t), 10), (190, 190, 195), 0.02)
    # Blond hair swept over his left eye (the viewer's right), straight on the other side
    p.polygon(
        [
            (-0.48, 0.2),
            (-0.5, -0.3),
            (-0.3, -0.6),
            (0.1, -0.66),
            (0.42, -0.5),
            (0.52, -0.1),
            (0.48, 0.3),
            (0.3, 0.12),
            (0.05, 0.06),
            (-0.02, -0.28),
            (-0.3, -0.36),
            (-0.36, 0.15),
        ],
        look.hair,
    )


@dataclass(frozen=True)
class Character:
    """How to draw one class, and its canonical colours."""

    draw: Callable[[Pen, Look, np.random.Generator], None]
    hair: RGB
    cloth: RGB
    accent: RGB
    hair_hue: float  # how far hair hue may wander, in turns


CHARACTERS = {
    "Luffy": Character(_luffy, (25, 25, 30), (200, 35, 40), (190, 30, 35), 0.0),
    "Nami": Character(_nami, (240, 125, 35), (60, 120, 210), (120, 70, 40), 0.04),
    "Sanji": Character(_sanji, (245, 215, 85), (30, 30, 35), (20, 20, 25), 0.04),
    "Zoro": Character(_zoro, (70, 165, 80), (245, 245, 240), (40, 110, 60), 0.06),
}


def _look(name: str, rng: np.random.Generator) -> Look:
    """The canonical colours of a character, jittered, sometimes in another outfit."""
    c = CHARACTERS[name]
    cloth, accent = _jitter(c.cloth, rng, 0.03), _jitter(c.accent, rng, 0.03)
    if rng.random() < OUTFIT_SHARE:
        cloth = _any_colour(rng)
    skin = _jitter((250, 214, 178), rng, 0.025, 0.3, 0.15)
    eyes = rng.choice(["open", "open", "open", "closed", "happy", "angry"])
    mouth = rng.choice(["grin", "smile", "flat", "open", "frown", "shout"])
    hair = _jitter(c.hair, rng, c.hair_hue, 0.25, 0.2)
    return Look(skin, hair, cloth, accent, str(eyes), str(mouth), float(rng.uniform(-0.07, 0.07)))


def _figure(name: str, face_px: float, rng: np.random.Generator) -> Image.Image:
    """A character on a transparent layer, the face centre in the middle, face_px tall."""
    f = face_px * SUPERSAMPLE
    w, h = math.ceil(2.7 * f) + 4, math.ceil(4.1 * f) + 4
    layer = Image.new("RGBA", (w - w % SUPERSAMPLE, h - h % SUPERSAMPLE), (0, 0, 0, 0))
    pen = Pen(ImageDraw.Draw(layer), layer.width / 2, layer.height / 2, f)
    CHARACTERS[name].draw(pen, _look(name, rng), rng)
    return layer.reduce(SUPERSAMPLE)


def _place(canvas: Image.Image, layer: Image.Image, centre: Point, angle: float) -> None:
    """Paste a figure layer rotated by `angle` degrees about its middle, the middle on `centre`."""
    a = -math.radians(angle)
    # The affine map from canvas to layer pixels; rounded so libm's last bits cannot matter
    cos, sin = round(math.cos(a), 12), round(math.sin(a), 12)
    tx, ty = centre
    c = layer.width / 2 - cos * tx - sin * ty
    f = layer.height / 2 + sin * tx - cos * ty
    # Resample only the part of the layer that lands on the canvas: the rest is wasted work
    xs, ys = zip(*[(cos * u + sin * v + c, -sin * u + cos * v + f) for u in (0, SIZE) for v in (0, SIZE)])
    x0, y0 = max(0, math.floor(min(xs)) - 2), max(0, math.floor(min(ys)) - 2)
    x1, y1 = min(layer.width, math.ceil(max(xs)) + 2), min(layer.height, math.ceil(max(ys)) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    part = layer.crop((x0, y0, x1, y1))
    data = (cos, sin, c - x0, -sin, cos, f - y0)
    moved = part.transform((SIZE, SIZE), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
    canvas.paste(moved, (0, 0), moved)


# --------------------------------------------------------------------------------------------
# Backgrounds, occluders, finishing


def _gradient(top: RGB, bottom: RGB, horizon: int = SIZE) -> np.ndarray:
    t = np.linspace(0.0, 1.0, horizon)[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return np.broadcast_to(rows, (horizon, SIZE, 3)).copy()


def _bg_sky(rng: np.random.Generator) -> np.ndarray:
    sky = _jitter((90, 160, 235), rng, 0.12, 0.4, 0.2)
    img = Image.fromarray(_gradient(sky, _shade(sky, 1.5)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # clouds
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(10, 35)
        for dx in (-r, 0, r):
            draw.ellipse([x + dx - r, y - r * 0.6, x + dx + r, y + r * 0.6], fill=(250, 250, 252))
    return np.asarray(img, dtype=np.float64)


def _bg_sea(rng: np.random.Generator) -> np.ndarray:
    horizon = int(rng.integers(40, 130))
    img = _bg_sky(rng)
    sea = _jitter((30, 110, 170), rng, 0.08, 0.3, 0.25)
    img[horizon:] = _gradient(sea, _shade(sea, 0.6), SIZE - horizon)
    rows = np.arange(horizon, SIZE)[:, None]
    waves = np.sin(np.arange(SIZE)[None, :] * rng.uniform(0.1, 0.3) + rows * 1.7) > 0.93
    img[horizon:][waves] = 235
    return img


def _bg_wood(rng: np.random.Generator) -> np.ndarray:
    base = np.array(_jitter((150, 100, 55), rng, 0.04, 0.3, 0.3), dtype=np.float64)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    warp = 6 * np.sin(y / rng.uniform(15, 40) + rng.uniform(0, 6))
    grain = 0.5 + 0.5 * np.sin((x + warp) / rng.uniform(1.5, 4.0))
    planks = (x % int(rng.integers(30, 70))) < 2
    shade = 0.75 + 0.3 * grain - 0.4 * planks
    img = base[None, None, :] * shade[:, :, None]
    return np.swapaxes(img, 0, 1) if rng.random() < 0.5 else img


def _bg_noise(rng: np.random.Generator) -> np.ndarray:
    cells = int(rng.integers(3, 10))
    coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.float64)
    return img + rng.normal(0, rng.uniform(5, 30), img.shape)


def _bg_shapes(rng: np.random.Generator) -> np.ndarray:
    img = Image.new("RGB", (SIZE, SIZE), _any_colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 14)):
        _random_shape(draw, rng, rng.uniform(0, SIZE, 2), rng.uniform(10, 60), _any_colour(rng))
    return np.asarray(img, dtype=np.float64)


BACKGROUNDS = (_bg_sky, _bg_sea, _bg_wood, _bg_noise, _bg_shapes)


def _random_shape(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, centre: np.ndarray, size: float, colour: RGB
) -> None:
    x, y = centre
    kind = rng.integers(0, 3)
    if kind == 0:
        top, bottom = y - size * rng.uniform(0.4, 1.0), y + size * rng.uniform(0.4, 1.0)
        draw.ellipse([x - size, top, x + size, bottom], fill=colour)
    elif kind == 1:
        top, right = y - size * rng.uniform(0.3, 1.0), x + size * rng.uniform(0.3, 1.0)
        draw.rectangle([x - size, top, right, y + size], fill=colour)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        radii = size * rng.uniform(0.5, 1.2, len(angles))
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for a, r in zip(angles, radii)], fill=colour)


def _background(rng: np.random.Generator) -> Image.Image:
    img = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))](rng)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _occlude(canvas: Image.Image, rng: np.random.Generator, centre: Point, face_px: float) -> None:
    """Random shapes over part of the figure (props, other people, foreground clutter)."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 3)):
        spot = np.array(centre) + rng.uniform(-0.9, 0.9, 2) * face_px
        _random_shape(draw, rng, spot, rng.uniform(0.12, 0.3) * face_px, _any_colour(rng))


def _manga(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Black and white: grey levels, inked edges, and often a screentone for the mid greys."""
    grey = ImageOps.autocontrast(img.convert("L"), cutoff=1)
    g = np.asarray(grey, dtype=np.float64)
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    g = np.where(edges > rng.uniform(40, 90), g * 0.2, g)
    if rng.random() < 0.7:
        period = rng.uniform(3.0, 5.0)
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        dots = 0.25 * (np.cos(2 * np.pi * x / period) + np.cos(2 * np.pi * y / period)) + 0.5
        tone = np.where(g / 255 > dots, 255.0, 30.0)
        mid = (g > 70) & (g < 200)
        g = np.where(mid, tone, g)
    out = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "L")
    return out.convert("RGB")


def _grade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate every hue by one random amount: a colour filter that keeps shapes intact."""
    h, s, v = img.convert("HSV").split()
    shift = int(rng.integers(40, 216))
    h = h.point(lambda value: (value + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def _finish(img: Image.Image, rng: np.random.Generator) -> bytes:
    """Colour treatment, blur and JPEG encoding: the bytes of the file."""
    if rng.random() < MANGA_SHARE:
        img = _manga(img, rng)
    elif rng.random() < GRADE_SHARE:
        img = _grade(img, rng)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.4)))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(rng.integers(50, 96)))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Images


def render_single(name: str, rng: np.random.Generator) -> bytes:
    """One JPEG of one character: any scale, position, rotation, background and treatment."""
    canvas = _background(rng)
    # The face fills 30-100% of the frame's height, small faces more often (whole figures)
    face_px = SIZE * (0.3 + 0.7 * rng.beta(1.3, 2.2))
    margin = 0.35 if rng.random() < 0.8 else 0.05  # sometimes partly cut off at the border
    centre = (rng.uniform(margin, 1 - margin) * SIZE, rng.uniform(margin, 1 - margin) * SIZE * 0.85)
    angle = float(np.clip(rng.normal(0, 14), -40, 40))
    _place(canvas, _figure(name, face_px, rng), centre, angle)
    if rng.random() < 0.35:
        _occlude(canvas, rng, centre, face_px)
    return _finish(canvas, rng)


def render_scene(rng: np.random.Generator) -> tuple[bytes, tuple[str, ...]]:
    """One JPEG of 2-3 distinct characters side by side, and their names in class order."""
    count = int(rng.integers(2, 4))
    names = [CLASSES[k] for k in rng.permutation(len(CLASSES))[:count]]
    canvas = _background(rng)
    slot = SIZE / count
    for k, name in enumerate(names):
        face_px = SIZE * rng.uniform(0.22, 0.36)
        centre = ((k + 0.5) * slot + rng.uniform(-0.15, 0.15) * slot, SIZE * rng.uniform(0.3, 0.5))
        _place(canvas, _figure(name, face_px, rng), centre, float(rng.normal(0, 10)))
    if rng.random() < 0.2:
        _occlude(canvas, rng, (SIZE / 2, SIZE / 2), SIZE * 0.3)
    return _finish(canvas, rng), tuple(sorted(names, key=CLASSES.index))


def _render(job: Job) -> tuple[str, bytes, tuple[str, ...]]:
    """Render one job in a worker: its relative path, JPEG bytes and labels."""
    seed, k, i = job
    # Each image owns a generator keyed by (seed, class, index): independent of workers and order
    rng = np.random.default_rng([seed, k, i])
    if k < len(CLASSES):
        return f"{CLASSES[k]}/{i:04d}.jpg", render_single(CLASSES[k], rng), (CLASSES[k],)
    data, labels = render_scene(rng)
    return f"{SCENES_DIR}/{i:04d}.jpg", data, labels


# --------------------------------------------------------------------------------------------
# The set


def _check_args(out: Path, per_class: int, scenes: int) -> None:
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    if scenes < 0:
        raise DataError(f"scenes must be 0 or more, got {scenes}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; refusing to overwrite it (choose another --out)")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; refusing to overwrite it (choose another --out)")


def _results(jobs: list[Job], workers: int) -> Iterator[tuple[str, bytes, tuple[str, ...]]]:
    if workers <= 1:
        yield from map(_render, jobs)
        return
    with worker_pool(workers) as pool:
        yield from pool.imap(_render, jobs, chunksize=chunk_size(len(jobs), workers))


def _write(tmp: Path, jobs: list[Job], workers: int) -> None:
    rows = []
    # disable=None: a bar on a terminal, none in logs and CI (as prepare's).
    bar = tqdm(_results(jobs, workers), total=len(jobs), desc="sample", unit="img", file=sys.stderr, disable=None)
    for rel, data, labels in bar:
        (tmp / rel).write_bytes(data)
        if rel.startswith(SCENES_DIR):
            rows.append((rel, "|".join(labels)))
    with open(tmp / LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "labels"])
        writer.writerows(rows)


def _render_into(out: Path, jobs: list[Job], workers: int) -> None:
    # Never over a folder that holds files: `out` was checked empty, and is still refused if filled meanwhile.
    with staged_output(out, overwrite=False) as tmp:
        for folder in (*CLASSES, SCENES_DIR):
            (tmp / folder).mkdir()
        _write(tmp, jobs, workers)


def generate(
    out: Path, per_class: int = PER_CLASS, scenes: int | None = None, seed: int = SEED, *, workers: int | None = None
) -> dict:
    """Render the sample set into `out` (which must be absent or empty); return a summary."""
    out = Path(out)
    scenes = per_class // 2 if scenes is None else scenes
    _check_args(out, per_class, scenes)
    workers = workers or cpu_count()
    jobs = [(seed, k, i) for k in range(len(CLASSES)) for i in range(per_class)]
    jobs += [(seed, len(CLASSES), i) for i in range(scenes)]
    start = time.perf_counter()
    try:
        _render_into(out, jobs, workers)
    except OSError as error:  # disk full, no permission, `out` filled meanwhile: say so in one line
        raise DataError(f"cannot write the sample to {out}: {error.strerror or error}") from error
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "images": len(jobs),
        "per_class": per_class,
        "scenes": scenes,
        "seed": seed,
        "seconds": round(seconds, 2),
        "seconds_per_1000": round(1000 * seconds / len(jobs), 2),
    }
