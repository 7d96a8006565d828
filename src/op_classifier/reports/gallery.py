"""Evaluate's error gallery: one self-contained HTML page of the val and test splits, whose confusion-matrix
cells open the images in them, each with every class's score and the audit's finding where it flagged one.

It needs no script and no request: MLflow's artifact viewer shows an HTML artifact in a sandboxed iframe, so a
cell is the label of a hidden radio button and CSS shows the panel of the checked one (docs/decisions.md).
Thumbnails are small JPEGs of the prepared arrays (what the model saw) as data: URIs, at most MAX_PER_CELL a
cell, so the page stays a few MB for thousands of images.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from op_classifier.data.prepared import Split, single_label
from op_classifier.errors import DataError
from op_classifier.reports.pages import class_colours, ink, jpeg_base64, page_text

THUMB_SIDE = 96  # px: enough to recognise a character, ~3 KB each
MAX_PER_CELL = 200  # images shown per cell (the most doubtful first); a line says how many more
MAX_SCORES = 8  # with more classes, a card lists the top scores and the true class's, not all
THRESHOLD = 0.5  # a scene's predicted set: the classes at or above it (as evaluate counts scenes)
AUDIT_COLUMNS = ("path", "kind", "score", "suggested")


class Finding(NamedTuple):
    """What the audit said of one image: the kind of issue, its score and the class it suggests."""

    kind: str
    score: float
    suggested: str


def read_findings(path: Path | None) -> dict[str, list[Finding]]:
    """The audit's issues.csv as manifest path -> findings; empty without the file (the audit is optional)."""
    if path is None or not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the audit's findings ({error})") from None
    if rows and not set(AUDIT_COLUMNS) <= set(rows[0]):
        raise DataError(f"{path}: not the audit's issues.csv (its columns must include {', '.join(AUDIT_COLUMNS)})")
    findings: dict[str, list[Finding]] = {}
    for row in rows:
        findings.setdefault(row["path"], []).append(Finding(row["kind"], _number(row["score"]), row["suggested"]))
    return findings


def _number(text: str | None) -> float:
    try:
        return float(text or "nan")
    except ValueError:
        return math.nan


def write_gallery(
    path: Path,
    classes: Sequence[str],
    splits: Mapping[str, Split],
    probs: Mapping[str, np.ndarray],
    files: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Sequence[Finding]] | None = None,
    source: str = "",
) -> Path:
    """Write the gallery page of the splits to path; files is the manifest's (each image's path by place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(gallery_page(classes, splits, probs, files, findings, source), encoding="utf-8")
    return path


def gallery_page(
    classes: Sequence[str],
    splits: Mapping[str, Split],
    probs: Mapping[str, np.ndarray],
    files: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Sequence[Finding]] | None = None,
    source: str = "",
) -> str:
    """The self-contained HTML page: per split a clickable confusion matrix, its cells' images, its scenes."""
    by_place = {(entry["split"], entry["index"]): str(entry.get("path", "")) for entry in files}
    css, sections = [_CSS, *(f".c{i}{{--c:{c};--ink:{ink(c)}}}\n" for i, c in enumerate(class_colours(classes)))], []
    for name, split in splits.items():
        paths = [by_place.get((name, index), f"{name}[{index}]") for index in range(len(split.labels))]
        view = _View(name, split, probs[name], paths, classes, findings or {})
        cells = view.cells()
        css.append(view.css(cells))
        sections.append(view.section(cells))
    meta = f"{page_text(source)} &middot; " if source else ""
    return _PAGE.format(css="".join(css), meta=meta + time.strftime("%Y-%m-%d %H:%M"), sections="\n".join(sections))


class _View:
    """One split's part of the page: its matrix, one panel per non-empty cell, its scenes."""

    def __init__(
        self,
        name: str,
        split: Split,
        probs: np.ndarray,
        paths: Sequence[str],
        classes: Sequence[str],
        findings: Mapping[str, Sequence[Finding]],
    ) -> None:
        self.key = re.sub(r"[^A-Za-z0-9_-]", "_", name)  # ids and radio names: never a quote or a space
        self.name, self.split, self.probs, self.paths = name, split, probs, paths
        self.classes, self.findings = classes, findings
        self.single = np.flatnonzero(single_label(split.labels))
        self.truth, self.guess = split.labels[self.single].argmax(1), probs[self.single].argmax(1)

    def cells(self) -> dict[tuple[int, int], list[int]]:
        """(actual, predicted) -> the rows in that cell, the lowest score for the true class first."""
        cells: dict[tuple[int, int], list[int]] = {}
        for row, actual, said in zip(self.single, self.truth, self.guess):
            cells.setdefault((int(actual), int(said)), []).append(int(row))
        for (actual, _), rows in cells.items():
            rows.sort(key=lambda row: self.probs[row, actual])
        return cells

    def css(self, cells: Mapping[tuple[int, int], list[int]]) -> str:
        """The rules that show the checked cell's panel and outline its labels: one pair per non-empty cell."""
        return "".join(
            f"#{self._id('p', k)}:checked~.body #{self._id('cell', k)}{{display:block}}\n"
            f"#{self._id('p', k)}:checked~.body label[for={self._id('p', k)}]{{outline:3px solid #1f2328}}\n"
            for k in cells
        )

    def section(self, cells: Mapping[tuple[int, int], list[int]]) -> str:
        """The split's <section>: radios first, as the CSS that shows a panel selects their later siblings."""
        errors = sorted(((k, rows) for k, rows in cells.items() if k[0] != k[1]), key=lambda item: -len(item[1]))
        first = errors[0][0] if errors else None  # the page opens on the largest confusion
        radios = "".join(
            f'<input class="pick" type="radio" name="pick-{self.key}" id="{self._id("p", k)}"'
            f"{' checked' if k == first else ''}>"
            for k in cells
        )
        return _SECTION.format(
            key=self.key,
            name=page_text(self.name),
            summary=self._summary(len(errors)),
            radios=radios,
            matrix=self._matrix(cells),
            errors=self._error_list(errors),
            panels="".join(self._panel(k, rows) for k, rows in cells.items()),
            scenes=self._scenes(),
        )

    def _summary(self, error_cells: int) -> str:
        right, count = int((self.truth == self.guess).sum()), len(self.single)
        text = (
            f"{count} single-label images, top-1 right on {right} ({right / max(count, 1):.1%}), "
            f"wrong on {count - right} in {error_cells} cell(s)"
        )
        if self.findings:
            flagged = sum(1 for path in self.paths if self.findings.get(path))
            text += f"; the audit flagged {flagged} image(s) of this split (an amber edge)"
        return text

    def _id(self, prefix: str, cell: tuple[int, int]) -> str:
        return f"{prefix}-{self.key}-{cell[0]}-{cell[1]}"

    def _matrix(self, cells: Mapping[tuple[int, int], list[int]]) -> str:
        n = len(self.classes)
        head = "".join(
            f'<th class="col"><span class="dot c{j}"></span>{page_text(c)}</th>' for j, c in enumerate(self.classes)
        )
        body = []
        for i, name in enumerate(self.classes):
            total = sum(len(cells.get((i, j), ())) for j in range(n)) or 1
            tds = "".join(self._cell((i, j), len(cells.get((i, j), ())), total) for j in range(n))
            body.append(f'<tr><th class="row"><span class="dot c{i}"></span>{page_text(name)}</th>{tds}</tr>')
        return (
            '<table class="matrix"><caption>actual (rows) &times; predicted (columns), top-1</caption>'
            f'<tr><th class="corner">actual \\ predicted</th>{head}</tr>{"".join(body)}</table>'
        )

    def _cell(self, cell: tuple[int, int], count: int, total: int) -> str:
        kind = "hit" if cell[0] == cell[1] else "miss"
        if not count:
            return f'<td class="{kind} zero">0</td>'
        shade = f"{0.15 + 0.75 * count / total:.2f}"
        title = f"actual {page_text(self.classes[cell[0]])}, predicted {page_text(self.classes[cell[1]])}"
        return (
            f'<td class="{kind}" style="--a:{shade}"><label for="{self._id("p", cell)}" title="{title}">'
            f"{count}</label></td>"
        )

    def _error_list(self, errors: Sequence[tuple[tuple[int, int], list[int]]]) -> str:
        if not errors:
            return '<p class="errors">No misclassified single-label image.</p>'
        links = "".join(
            f'<label for="{self._id("p", k)}">{page_text(self.classes[k[0]])} &rarr; '
            f"{page_text(self.classes[k[1]])} <b>{len(rows)}</b></label>"
            for k, rows in errors
        )
        return f'<p class="errors"><span>Misclassified, most first:</span>{links}</p>'

    def _panel(self, cell: tuple[int, int], rows: Sequence[int]) -> str:
        actual, said = (page_text(self.classes[i]) for i in cell)
        verdict = "right" if cell[0] == cell[1] else "wrong"
        cards = "".join(self._card(row, {cell[0]}, {cell[1]}) for row in rows[:MAX_PER_CELL])
        return (
            f'<div class="panel {verdict}" id="{self._id("cell", cell)}">'
            f"<h3>actual <b>{actual}</b>, predicted <b>{said}</b>: <span class=count>{len(rows)}</span> image(s)"
            f'<small>, the lowest score for {actual} first</small></h3><div class="cards">{cards}</div>'
            f"{_more(len(rows))}</div>"
        )

    def _scenes(self) -> str:
        rows = np.flatnonzero(~single_label(self.split.labels))
        if not len(rows):
            return ""
        truths = [set(np.flatnonzero(self.split.labels[row] > 0.5)) for row in rows]
        saids = [set(np.flatnonzero(self.probs[row] >= THRESHOLD)) for row in rows]
        order = sorted(range(len(rows)), key=lambda k: truths[k] == saids[k])  # mismatches first
        missed = sum(truths[k] != saids[k] for k in order)
        cards = "".join(self._card(int(rows[k]), truths[k], saids[k]) for k in order[:MAX_PER_CELL])
        return (
            f'<details class="scenes"><summary>Scenes: {len(rows)} image(s) with several characters, '
            f"{missed} whose classes at &ge; {THRESHOLD:.0%} are not exactly theirs (those first)</summary>"
            f'<div class="cards">{cards}</div>{_more(len(rows))}</details>'
        )

    def _card(self, row: int, truth: set[int], said: set[int]) -> str:
        path = self.paths[row]
        name = path.replace("\\", "/").rsplit("/", 1)[-1] or path
        audit = "".join(_finding(f) for f in self.findings.get(path, ()))
        wrong = " wrong" if truth != said else ""
        names = ", ".join(page_text(self.classes[i]) for i in sorted(truth)) or "none"
        guess = ", ".join(page_text(self.classes[i]) for i in sorted(said)) or "none"
        return (
            f'<figure class="card{wrong}{" flagged" if audit else ""}">'
            f'<img src="data:image/jpeg;base64,{_thumbnail(self.split.images[row])}" alt="{page_text(name)}">'
            f'<figcaption><b class="name" title="{page_text(path)}">{page_text(name)}</b>'
            f'<span class="said">{names} &rarr; {guess}</span>'
            f"<ul>{self._scores(row, truth)}</ul>{audit}</figcaption></figure>"
        )

    def _scores(self, row: int, truth: set[int]) -> str:
        scores = self.probs[row]
        shown = range(len(self.classes))
        if len(self.classes) > MAX_SCORES:  # the top ones and the true classes, in the model's class order
            shown = sorted({*np.argsort(-scores)[: max(MAX_SCORES - len(truth), 1)].tolist(), *truth})
        top = int(scores.argmax())
        return "".join(
            f'<li class="c{i}{" t" if i in truth else ""}{" p" if i == top else ""}">'
            f'<span>{page_text(self.classes[i])}</span><i style="width:{scores[i] * 100:.0f}%"></i>'
            f"<em>{scores[i]:.1%}</em></li>"
            for i in shown
        )


def _finding(finding: Finding) -> str:
    suggested = f", suggests <b>{page_text(finding.suggested)}</b>" if finding.suggested else ""
    score = "" if math.isnan(finding.score) else f" {finding.score:.2f}"
    return f'<p class="audit">audit: {page_text(finding.kind)}{score}{suggested}</p>'


def _more(count: int) -> str:
    if count <= MAX_PER_CELL:
        return ""
    return f'<p class="more">and {count - MAX_PER_CELL} more not shown (the first {MAX_PER_CELL} are)</p>'


def _thumbnail(pixels: np.ndarray) -> str:
    """A prepared image (H x W x 3, uint8) as a base64 JPEG, its long side THUMB_SIDE px."""
    return jpeg_base64(Image.fromarray(np.asarray(pixels, dtype=np.uint8)), THUMB_SIDE, quality=80)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>op-classifier error gallery</title>
<style>
{css}</style>
</head>
<body>
<header><h1>Error gallery</h1><p class="meta">{meta} &middot; pick a cell of a confusion matrix to see its images;
misclassified cells are red</p></header>
{sections}
</body>
</html>
"""

_SECTION = """<section class="split" id="split-{key}">
<h2>{name}</h2><p class="meta">{summary}</p>
{radios}
<div class="body">
<div class="left">{matrix}{errors}</div>
<div class="panels"><p class="hint">Pick a cell of the matrix: its images appear here.</p>{panels}</div>
</div>
{scenes}
</section>"""

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}
header{background:#fff;border-bottom:1px solid #e3e5e8;padding:14px 24px 10px}
h1{margin:0;font-size:22px;font-weight:650}
h2{margin:0;font-size:18px}
h3{margin:0 0 10px;font-size:14px;font-weight:500}
h3 small{color:#59636e;font-weight:400}
.meta{margin:4px 0 0;color:#59636e}
.split{padding:14px 24px;border-bottom:1px solid #e3e5e8}
.pick{position:absolute;opacity:0;width:0;height:0}
.body{display:flex;flex-wrap:wrap;gap:20px;margin-top:12px;align-items:flex-start}
.left{flex:0 0 auto;max-width:100%;overflow-x:auto}
.panels{flex:1 1 300px;min-width:260px}
.matrix{border-collapse:collapse;background:#fff}
.matrix caption{caption-side:bottom;color:#8a939c;font-size:12px;padding-top:4px;text-align:left}
.matrix th{font-weight:500;font-size:12.5px;padding:4px 8px;white-space:nowrap}
.matrix th.row{text-align:right}
.matrix th.corner{color:#8a939c;font-weight:400}
.matrix td{border:1px solid #e3e5e8;width:48px;height:40px;text-align:center;padding:0;font-variant-numeric:tabular-nums}
.matrix td.zero{color:#c4c9cf}
.matrix td.hit{background:rgba(46,160,67,var(--a,0))}
.matrix td.miss{background:rgba(217,48,37,var(--a,0))}
.matrix td.miss:not(.zero){font-weight:700}
.matrix label{display:block;line-height:40px;cursor:pointer}
.matrix label:hover{outline:2px solid #59636e}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;background:var(--c);margin-right:6px}
.errors{display:flex;flex-wrap:wrap;gap:6px;max-width:520px;font-size:12.5px}
.errors span{color:#59636e}
.errors label{cursor:pointer;padding:1px 8px;border:1px solid #f1c0bd;background:#fdf3f2;border-radius:999px}
.panel{display:none}
.panel.wrong h3 b{color:#c5221f}
.pick:checked~.body .hint{display:none}
.hint{color:#8a939c}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px}
.card{margin:0;display:flex;gap:8px;background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:6px}
.card.wrong{border-color:#f1c0bd}
.card.flagged{box-shadow:inset 3px 0 #e8a317}
.card img{width:72px;height:72px;object-fit:contain;background:#eceef1;border-radius:4px;flex:none}
figcaption{min-width:0;flex:1;font-size:11.5px}
.name{display:block;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.said{display:block;color:#59636e}
.card.wrong .said{color:#c5221f}
figcaption ul{list-style:none;margin:2px 0 0;padding:0}
figcaption li{display:grid;grid-template-columns:minmax(30px,40%) 1fr 40px;gap:4px;align-items:center;color:#59636e}
figcaption li span{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figcaption li i{display:block;height:6px;border-radius:3px;background:var(--c);opacity:.35}
figcaption li em{font-style:normal;text-align:right;font-variant-numeric:tabular-nums}
figcaption li.t span{font-weight:650;color:#1f2328}
figcaption li.p i{opacity:1}
figcaption li.p em{font-weight:650;color:#1f2328}
.audit{margin:3px 0 0;padding:2px 6px;background:#fdf6e3;border-radius:4px;color:#7a5200}
.more{color:#59636e;font-style:italic}
.scenes{margin-top:16px}
.scenes summary{cursor:pointer;font-weight:500}
.scenes .cards{margin-top:10px}
"""
