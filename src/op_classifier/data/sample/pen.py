"""Drawing in face units for the sample: colours, a pen, the face and body parts all four characters share."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

SUPERSAMPLE = 2  # figures are drawn at 2x and reduced: cheap anti-aliasing
INK = (25, 20, 25)

RGB = tuple[int, int, int]
Point = tuple[float, float]


# --------------------------------------------------------------------------------------------
# Colours


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def jitter(rgb: RGB, rng: np.random.Generator, hue: float, sat: float = 0.15, val: float = 0.12) -> RGB:
    """The colour with hue shifted by up to ±hue turns and saturation/value scaled a little."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return hsv(
        h + rng.uniform(-hue, hue),
        s * rng.uniform(1 - sat, 1 + sat),
        v * rng.uniform(1 - val, 1 + val),
    )


def any_colour(rng: np.random.Generator) -> RGB:
    """A random vivid-to-dull colour; the palette of backgrounds, occluders and swapped outfits."""
    return hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))


def shade(rgb: RGB, factor: float) -> RGB:
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


def curve(fn: Callable[[float], Point], n: int = 24) -> list[Point]:
    return [fn(t / (n - 1)) for t in range(n)]


def face_outline() -> list[Point]:
    # A rounded skull and a narrower, pointed anime chin
    points = []
    for step in range(40):
        a = 2 * math.pi * step / 40
        x, y = 0.4 * math.cos(a), 0.5 * math.sin(a)
        if y > 0:
            x *= 1 - 0.45 * (y / 0.5) ** 2
        points.append((x, y))
    return points


FACE = face_outline()
TORSO = [(-1.05, 2.0), (-1.0, 0.98), (-0.85, 0.8), (-0.25, 0.62), (0.25, 0.62), (0.85, 0.8), (1.0, 0.98), (1.05, 2.0)]


def spiral(cx: float, cy: float, radius: float, turns: float = 2.2) -> list[Point]:
    """An Archimedean spiral from its centre outwards: Sanji's eyebrow curl."""
    return curve(
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


def body(p: Pen, look: Look, shoulders_bare: bool = False) -> None:
    p.polygon([(-0.14, 0.3), (0.14, 0.3), (0.16, 0.8), (-0.16, 0.8)], look.skin)
    p.polygon(TORSO, look.skin if shoulders_bare else look.cloth)


def head(p: Pen, look: Look) -> None:
    for side in (-1, 1):
        p.ellipse((side * 0.4 - 0.07, -0.1, side * 0.4 + 0.07, 0.14), look.skin)
    p.polygon(FACE, look.skin)


def eye(p: Pen, x: float, look: Look, style: str, side: int) -> None:
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


def eyes(p: Pen, look: Look, style: str, sides: Sequence[int] = (-1, 1)) -> None:
    for side in sides:
        eye(p, side * 0.17, look, style, side)


def brows(p: Pen, sides: Sequence[int] = (-1, 1), thick: float = 0.035) -> None:
    for side in sides:
        p.line([(side * 0.08, -0.2), (side * 0.25, -0.22)], INK, thick)


def mouth(p: Pen, look: Look) -> None:
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


def nose(p: Pen) -> None:
    p.line([(0.0, 0.1), (0.025, 0.14)], INK, 0.025)
