"""The self-contained HTML report of `op-classifier predict --report`: one card per image, as text (predict
writes it).

Thumbnails are embedded as base64 JPEGs, so the page is one file that opens anywhere. Every name on it (file
names, class names, the model) is shown as predict prints it (output.shown: no control character) and
HTML-escaped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from op_classifier.data.images import to_rgb
from op_classifier.reports.pages import class_colours, ink, jpeg_base64, page_text

if TYPE_CHECKING:
    from op_classifier.serving.result import Result


def percent(fraction: float) -> str:
    """0.5 -> '50%'."""
    return f"{fraction * 100:g}%"


THUMB_SIDE = 360  # px: sharp on a 2x screen at the cards' width


def report_page(source: str, threshold: float, classes: Sequence[str], results: Sequence[Result]) -> str:
    """A self-contained HTML page: header with model, threshold and counts, then one card per file."""
    return _PAGE.format(
        css=_CSS + _class_css(classes),
        threshold=percent(threshold),
        header=_header(source, threshold, classes, results),
        cards="\n".join(_card(result, threshold, classes) for result in results),
    )


def _text(value: str) -> str:
    """A name as page text: shown as predict prints it, then HTML-escaped."""
    return page_text(value)


def _class_css(classes: Sequence[str]) -> str:
    return "".join(f".c{i}{{--c:{colour};--ink:{ink(colour)}}}\n" for i, colour in enumerate(class_colours(classes)))


def _header(source: str, threshold: float, classes: Sequence[str], results: Sequence[Result]) -> str:
    good = [result for result in results if result.error is None]
    stats = [
        (len(results), "files"),
        (len(good), "predicted"),
        (sum(not r.predicted(threshold) for r in good), f"none &ge; {percent(threshold)}"),
        (len(results) - len(good), "failed"),
    ]
    legend = '<li class="caption">predicted per class</li>' + "".join(
        f'<li class="c{i}"><span class="dot"></span>{_text(name)}'
        f"<b>{sum(name in r.predicted(threshold) for r in good)}</b></li>"
        for i, name in enumerate(classes)
    )
    return _HEADER.format(
        model=_text(source),
        threshold=percent(threshold),
        when=time.strftime("%Y-%m-%d %H:%M"),
        stats="".join(
            f'<div class="stat{" bad" if label == "failed" and n else ""}"><b>{n}</b>{label}</div>'
            for n, label in stats
        ),
        legend=legend,
    )


def _card(result: Result, threshold: float, classes: Sequence[str]) -> str:
    name, folder = _split_path(result.path)
    title = f'<h2 title="{_text(result.path)}">{_text(name)}</h2><p class="dir">{_text(folder)}</p>'
    if result.error is not None:
        return _ERROR_CARD.format(title=title, error=_text(result.error))
    thumb = _thumbnail(result.path)
    image = (
        f'<img src="data:image/jpeg;base64,{thumb}" alt="{_text(name)}">'
        if thumb
        else '<span class="nothumb">no preview</span>'
    )
    return _CARD.format(
        image=image, title=title, bars=_bars(result, threshold, classes), verdict=_verdict(result, threshold, classes)
    )


def _bars(result: Result, threshold: float, classes: Sequence[str]) -> str:
    rows = []
    for i, name in enumerate(classes):
        p = result.probabilities[name]
        state = (" on" if p >= threshold else "") + (" top" if name == result.top else "")
        mark = '<i title="most probable">&#9733;</i>' if name == result.top else ""
        rows.append(
            f'<li class="c{i}{state}"><span class="label">{_text(name)}{mark}</span>'
            f'<span class="track"><span class="fill" style="width:{p * 100:.1f}%"></span></span>'
            f'<span class="pct">{p:.1%}</span></li>'
        )
    return "".join(rows)


def _verdict(result: Result, threshold: float, classes: Sequence[str]) -> str:
    chosen = result.predicted(threshold)
    if not chosen:
        return f'<span class="none">none &ge; {percent(threshold)}</span>'
    return "".join(f'<span class="chip c{classes.index(name)}">{_text(name)}</span>' for name in chosen)


def _split_path(path: str) -> tuple[str, str]:
    parent, _, name = path.replace(os.sep, "/").rstrip("/").rpartition("/")
    return name or path, parent


def _thumbnail(path: str) -> str | None:
    """The image as a base64 JPEG, its long side THUMB_SIDE px, upright; None if that fails."""
    try:
        with warnings.catch_warnings():
            # load_image already refused bombs; this only guards a file replaced since.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image))
        return jpeg_base64(rgb, THUMB_SIDE, quality=82)
    except Exception:  # a preview is a nicety: the card still shows the probabilities
        return None


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>op-classifier predictions</title>
<style>
{css}</style>
</head>
<body style="--t:{threshold}">
{header}
<main class="grid">
{cards}
</main>
</body>
</html>
"""

_HEADER = """<header>
  <div class="head">
    <div>
      <h1>Predictions</h1>
      <p class="meta">model <code>{model}</code> &middot; threshold <b>{threshold}</b> &middot; <span class="nowrap">{when}</span></p>
    </div>
    <div class="stats">{stats}</div>
  </div>
  <ul class="legend">{legend}</ul>
</header>"""

_CARD = """<article class="card">
  <figure>{image}</figure>
  <div class="body">{title}
    <ul class="bars">{bars}</ul>
    <div class="verdict">{verdict}</div>
  </div>
</article>"""

_ERROR_CARD = """<article class="card failed">
  <figure><span class="warn">!</span><small>not predicted</small></figure>
  <div class="body">{title}
    <p class="error">{error}</p>
  </div>
</article>"""

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
header{background:#fff;border-bottom:1px solid #e3e5e8;padding:22px 28px 16px}
.head{display:flex;flex-wrap:wrap;gap:16px 32px;align-items:flex-end;justify-content:space-between}
h1{margin:0;font-size:22px;font-weight:650;letter-spacing:-.01em}
.meta{margin:4px 0 0;color:#59636e}
.nowrap{white-space:nowrap}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f1f3;padding:1px 6px;border-radius:4px;color:#1f2328}
.stats{display:flex;gap:10px}
.stat{min-width:78px;padding:8px 12px;border:1px solid #e3e5e8;border-radius:10px;color:#59636e;font-size:12px;text-align:center}
.stat b{display:block;color:#1f2328;font-size:20px;font-weight:650;line-height:1.2}
.stat.bad{border-color:#f1c0bd;background:#fdf3f2}.stat.bad b{color:#c5221f}
.legend{list-style:none;margin:14px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
.legend .caption{border:0;padding:0 4px 0 0;color:#8a939c;font-size:12px}
.legend li{display:flex;align-items:center;gap:7px;padding:3px 10px 3px 8px;border:1px solid #e3e5e8;border-radius:999px;font-size:13px}
.legend b{font-weight:600;color:#59636e;font-size:12px}
.dot{width:10px;height:10px;border-radius:50%;background:var(--c)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:18px;padding:22px 28px 40px;max-width:1600px;margin:0 auto}
.card{background:#fff;border:1px solid #e3e5e8;border-radius:12px;overflow:hidden;display:flex;flex-direction:column;box-shadow:0 1px 2px rgba(16,24,40,.04)}
figure{position:relative;margin:0;aspect-ratio:4/3;background:#eceef1;display:flex;flex-direction:column;gap:8px;align-items:center;justify-content:center}
figure img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;display:block}
.nothumb{color:#8a939c;font-size:12px}
.body{padding:12px 14px 14px;display:flex;flex-direction:column;gap:2px;flex:1}
h2{margin:0;font-size:14px;font-weight:600;overflow-wrap:anywhere}
.dir{margin:0 0 8px;color:#8a939c;font-size:12px;overflow-wrap:anywhere;min-height:1.2em}
.bars{list-style:none;margin:0;padding:0;display:grid;gap:5px}
.bars li{display:grid;grid-template-columns:minmax(52px,36%) 1fr 46px;align-items:center;gap:8px;font-size:12.5px;color:#59636e}
.label{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.label i{font-style:normal;color:#d4a106;margin-left:4px;font-size:11px}
.track{position:relative;height:8px;border-radius:4px;background:#eceef1}
.track::after{content:"";position:absolute;left:var(--t);top:-3px;bottom:-3px;width:1px;background:#9aa3ad}
.fill{display:block;height:100%;border-radius:4px;background:var(--c);opacity:.32}
.pct{text-align:right;font-variant-numeric:tabular-nums}
.bars li.on{color:#1f2328}.bars li.on .label{font-weight:600}.bars li.on .fill{opacity:1}
.bars li.top .pct{font-weight:650;color:#1f2328}
.verdict{margin-top:auto;padding-top:11px;display:flex;flex-wrap:wrap;gap:6px;align-items:center}
.chip{background:var(--c);color:var(--ink);border-radius:999px;padding:2px 10px;font-size:12px;font-weight:600}
.none{color:#8a939c;font-size:12px;font-style:italic}
.failed{border-color:#f1c0bd}
.failed figure{background:repeating-linear-gradient(135deg,#fdf3f2 0 10px,#fbe9e7 10px 20px)}
.failed figure small{color:#a50e0e;font-size:12px;font-weight:600;letter-spacing:.04em;text-transform:uppercase}
.warn{width:40px;height:40px;border-radius:50%;background:#d93025;color:#fff;font-weight:700;font-size:22px;display:flex;align-items:center;justify-content:center}
.error{margin:2px 0 0;padding:8px 10px;background:#fdf3f2;border-radius:8px;color:#a50e0e;font-size:12.5px;overflow-wrap:anywhere}
@media (max-width:600px){header{padding:16px}.grid{padding:16px;gap:12px}.stats{flex-wrap:wrap}}
"""
