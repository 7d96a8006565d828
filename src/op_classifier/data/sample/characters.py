"""The sample's four characters: each drawn with its canonical silhouette and marks, its colours jittered."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from op_classifier.data.sample.pen import (
    INK,
    RGB,
    SUPERSAMPLE,
    Look,
    Pen,
    any_colour,
    body,
    brows,
    curve,
    eyes,
    head,
    jitter,
    mouth,
    nose,
    shade,
    spiral,
)

OUTFIT_SHARE = 0.35  # colour images with a non-canonical outfit colour


# --------------------------------------------------------------------------------------------
# The four characters


def _luffy(p: Pen, look: Look, rng: np.random.Generator) -> None:
    body(p, look)
    # The open vest shows the chest, sometimes with the X-shaped scar
    p.polygon([(-0.2, 0.64), (0.2, 0.64), (0.36, 2.0), (-0.36, 2.0)], look.skin)
    if rng.random() < 0.5:
        p.line([(-0.15, 1.15), (0.15, 1.45)], (150, 60, 50), 0.04)
        p.line([(0.15, 1.15), (-0.15, 1.45)], (150, 60, 50), 0.04)
    p.ellipse((-0.5, -0.55, 0.5, 0.15), look.hair)  # messy black hair behind the face
    head(p, look)
    f = p.shifted(look.turn)
    eyes(f, look, "round")
    brows(f)
    # The scar under his left eye (the viewer's right): two short strokes
    f.line([(0.08, 0.1), (0.27, 0.07)], (140, 30, 30), 0.04)
    f.line([(0.13, 0.04), (0.2, 0.14)], (140, 30, 30), 0.035)
    mouth(f, look)
    nose(f)
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
    straw = jitter((236, 200, 95), rng, 0.02)
    lift = rng.uniform(-0.05, 0.05)
    p.ellipse((-0.92, -0.58 + lift, 0.92, -0.3 + lift), straw)  # the wide brim
    for r in (0.75, 0.6):
        p.arc((-r, -0.52 + lift, r, -0.36 + lift), 0, 180, 0.015)
    p.chord((-0.48, -1.0 + lift, 0.48, -0.24 + lift), 180, 360, straw)  # the dome
    p.polygon([(-0.48, -0.62 + lift), (0.48, -0.62 + lift), (0.48, -0.5 + lift), (-0.48, -0.5 + lift)], band)


def _zoro(p: Pen, look: Look, rng: np.random.Generator) -> None:
    _sword_hilts(p, rng)
    body(p, look)
    p.polygon([(-0.2, 0.64), (0.2, 0.64), (0.0, 0.95)], look.skin)  # open collar
    p.polygon([(-1.03, 1.45), (1.03, 1.45), (1.05, 2.0), (-1.05, 2.0)], look.accent)  # haramaki sash
    p.line([(-1.0, 1.6), (1.0, 1.6)], shade(look.accent, 0.7), 0.03)
    head(p, look)
    f = p.shifted(look.turn)
    eyes(f, look, "narrow")
    brows(f, thick=0.05)
    mouth(f, look)
    nose(f)
    # Short cropped hair hugging the skull, with a short jagged hairline
    crown = curve(lambda t: (-0.45 + 0.9 * t, -0.34 - 0.3 * math.sin(math.pi * t)), 12)
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
    hem = curve(lambda t: (0.7 - 1.4 * t, 1.45 + 0.08 * math.sin(6 * math.pi * t)), 16)
    p.polygon([(-0.55, -0.3), (-0.4, -0.6), (0.0, -0.66), (0.4, -0.6), (0.55, -0.3), (0.7, 1.45)] + hem, look.hair)
    body(p, look, shoulders_bare=True)
    top = look.cloth
    p.polygon([(-0.6, 1.12), (0.6, 1.12), (0.72, 2.0), (-0.72, 2.0)], top)
    if rng.random() < 0.6:  # her striped top
        for y in (1.3, 1.5, 1.7, 1.9):
            p.line([(-0.66, y), (0.66, y)], (245, 245, 245), 0.06)
    for side in (-1, 1):
        p.line([(side * 0.4, 1.12), (side * 0.32, 0.7)], top, 0.04)
    _tattoo(p, 0.84, 1.12)
    head(p, look)
    f = p.shifted(look.turn)
    eyes(f, look, "lashes")
    mouth(f, look)
    nose(f)
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
    p.line(spiral(x, y, 0.09, 1.5), blue, 0.025)


def _sanji(p: Pen, look: Look, rng: np.random.Generator) -> None:
    p.ellipse((-0.5, -0.6, 0.5, 0.3), look.hair)  # hair behind the face, down to the jaw
    body(p, look)
    shirt = (235, 235, 240) if rng.random() < 0.6 else (120, 160, 220)
    p.polygon([(-0.25, 0.62), (0.25, 0.62), (0.0, 1.6)], shirt)
    p.polygon([(-0.25, 0.62), (-0.05, 1.6), (-0.45, 1.0)], shade(look.cloth, 1.4))  # lapels
    p.polygon([(0.25, 0.62), (0.05, 1.6), (0.45, 1.0)], shade(look.cloth, 1.4))
    p.polygon([(-0.06, 0.66), (0.06, 0.66), (0.04, 0.76), (-0.04, 0.76)], look.accent)  # the tie
    p.polygon([(-0.04, 0.76), (0.04, 0.76), (0.08, 1.4), (0.0, 1.5), (-0.08, 1.4)], look.accent)
    head(p, look)
    f = p.shifted(look.turn)
    eyes(f, look, "narrow", sides=(-1,))
    # The curled eyebrow: a stroke ending in a spiral over the visible eye
    f.line([(-0.3, -0.2), (-0.12, -0.23)], INK, 0.035)
    f.line(spiral(-0.1, -0.2, 0.06), INK, 0.03)
    mouth(f, look)
    nose(f)
    f.polygon([(-0.05, 0.42), (0.05, 0.42), (0.0, 0.5)], look.hair)  # goatee
    f.line([(0.08, 0.3), (0.32, 0.38)], (245, 245, 245), 0.04)  # cigarette
    f.line([(0.3, 0.37), (0.34, 0.39)], (230, 80, 30), 0.045)
    f.line(curve(lambda t: (0.34 + 0.06 * math.sin(5 * t), 0.34 - 0.35 * t), 10), (190, 190, 195), 0.02)
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
    cloth, accent = jitter(c.cloth, rng, 0.03), jitter(c.accent, rng, 0.03)
    if rng.random() < OUTFIT_SHARE:
        cloth = any_colour(rng)
    skin = jitter((250, 214, 178), rng, 0.025, 0.3, 0.15)
    eyes = rng.choice(["open", "open", "open", "closed", "happy", "angry"])
    mouth = rng.choice(["grin", "smile", "flat", "open", "frown", "shout"])
    hair = jitter(c.hair, rng, c.hair_hue, 0.25, 0.2)
    return Look(skin, hair, cloth, accent, str(eyes), str(mouth), float(rng.uniform(-0.07, 0.07)))


def figure(name: str, face_px: float, rng: np.random.Generator) -> Image.Image:
    """A character on a transparent layer, the face centre in the middle, face_px tall."""
    f = face_px * SUPERSAMPLE
    w, h = math.ceil(2.7 * f) + 4, math.ceil(4.1 * f) + 4
    layer = Image.new("RGBA", (w - w % SUPERSAMPLE, h - h % SUPERSAMPLE), (0, 0, 0, 0))
    pen = Pen(ImageDraw.Draw(layer), layer.width / 2, layer.height / 2, f)
    CHARACTERS[name].draw(pen, _look(name, rng), rng)
    return layer.reduce(SUPERSAMPLE)
