"""The sample's frames: backgrounds, placing figures, occluders, colour treatments and the JPEG bytes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from op_classifier.data.sample.characters import figure
from op_classifier.data.sample.pen import RGB, Point, any_colour, jitter, shade

CLASSES = ("Luffy", "Nami", "Sanji", "Zoro")
SIZE = 180
MANGA_SHARE = 0.30  # black-and-white images, where colour is no cue at all
GRADE_SHARE = 0.20  # colour images whose hues are rotated wholesale (filters, odd lighting)


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
    sky = jitter((90, 160, 235), rng, 0.12, 0.4, 0.2)
    img = Image.fromarray(_gradient(sky, shade(sky, 1.5)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # clouds
        x, y, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(10, 35)
        for dx in (-r, 0, r):
            draw.ellipse([x + dx - r, y - r * 0.6, x + dx + r, y + r * 0.6], fill=(250, 250, 252))
    return np.asarray(img, dtype=np.float64)


def _bg_sea(rng: np.random.Generator) -> np.ndarray:
    horizon = int(rng.integers(40, 130))
    img = _bg_sky(rng)
    sea = jitter((30, 110, 170), rng, 0.08, 0.3, 0.25)
    img[horizon:] = _gradient(sea, shade(sea, 0.6), SIZE - horizon)
    rows = np.arange(horizon, SIZE)[:, None]
    waves = np.sin(np.arange(SIZE)[None, :] * rng.uniform(0.1, 0.3) + rows * 1.7) > 0.93
    img[horizon:][waves] = 235
    return img


def _bg_wood(rng: np.random.Generator) -> np.ndarray:
    base = np.array(jitter((150, 100, 55), rng, 0.04, 0.3, 0.3), dtype=np.float64)
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
    img = Image.new("RGB", (SIZE, SIZE), any_colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 14)):
        _random_shape(draw, rng, rng.uniform(0, SIZE, 2), rng.uniform(10, 60), any_colour(rng))
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
        _random_shape(draw, rng, spot, rng.uniform(0.12, 0.3) * face_px, any_colour(rng))


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
    _place(canvas, figure(name, face_px, rng), centre, angle)
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
        _place(canvas, figure(name, face_px, rng), centre, float(rng.normal(0, 10)))
    if rng.random() < 0.2:
        _occlude(canvas, rng, (SIZE / 2, SIZE / 2), SIZE * 0.3)
    return _finish(canvas, rng), tuple(sorted(names, key=CLASSES.index))
