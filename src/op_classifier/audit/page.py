"""The audit's gallery: one self-contained HTML page of the flagged images, a section per kind, worst first,
each with its split, its given label, the label Datalab suggests and its score (thumbnails as data: URIs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from op_classifier.audit.findings import KINDS, Finding
from op_classifier.reports.pages import jpeg_base64, page_text

THUMB_SIDE = 112  # px
TITLES = {
    "label": "Label issues: the label given is likely wrong (the suggested one in bold)",
    "outlier": "Outliers: unlike the rest of the set",
    "near_duplicate": "Near-duplicates: nearly the same image as another (across splits: a leak)",
    "class_imbalance": "Class imbalance: images of a class much rarer than the others",
}
STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}h2{margin-top:28px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{width:150px;border:1px solid #d0d7de;border-radius:6px;padding:6px}
.card img{display:block;margin:auto;max-width:136px}.card p{margin:4px 0;word-break:break-all;font-size:12px}
.leak{color:#cf222e}"""


def write_page(
    out: Path, findings: Sequence[Finding], thumbnail: Callable[[Finding], Image.Image], shown: int, summary: str
) -> Path:
    """Write the page to `out`: at most `shown` images of each kind; `thumbnail` gives a finding's image."""
    sections = []
    for kind in KINDS:
        found = [finding for finding in findings if finding.kind == kind]
        more = f"<p>{len(found) - shown} more in issues.csv</p>" if len(found) > shown else ""
        cards = "".join(_card(finding, thumbnail(finding)) for finding in found[:shown])
        body = f'<div class="cards">{cards}</div>{more}' if found else "<p>none found</p>"
        sections.append(f"<h2>{page_text(TITLES[kind])} ({len(found)})</h2>{body}")
    page = (
        f"<!doctype html><meta charset=utf-8><title>op-classifier audit</title><style>{STYLE}</style>"
        f'<main id="op-audit"><h1>Data audit</h1><p>{page_text(summary)}</p>{"".join(sections)}</main>'
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _card(finding: Finding, image: Image.Image) -> str:
    label = page_text(finding.given) + (f" &rarr; <b>{page_text(finding.suggested)}</b>" if finding.suggested else "")
    note = finding.note
    leak = ' class="leak"' if note.startswith("crosses splits") else ""
    return (
        f'<div class="card"><img src="data:image/jpeg;base64,{jpeg_base64(image, THUMB_SIDE, 80)}" alt="">'
        f"<p>{page_text(finding.split)}/{page_text(finding.path)}</p><p>{label}</p>"
        f"<p>score {finding.score:.3f}</p>" + (f"<p{leak}>{page_text(note)}</p>" if note else "") + "</div>"
    )
