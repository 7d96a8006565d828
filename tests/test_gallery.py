"""Evaluate's error gallery (issue 36): one HTML file whose confusion cells open their images, without scripts."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from op_classifier.data.prepared import Split
from op_classifier.errors import DataError
from op_classifier.reports import gallery
from op_classifier.reports.gallery import Finding, gallery_page, read_findings

CLASSES = ["Luffy", "Na<mi>", 'San"ji']
# val: actual -> predicted, single-label; two scenes at the end.
VAL = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (1, 2), (1, 2), (2, 2), (2, 0)]


class _Page(HTMLParser):
    """Each panel's id -> the file names of its cards; each cell label's target; every radio's id."""

    def __init__(self) -> None:
        super().__init__()
        self.panels: dict[str, list[str]] = {}
        self.labels: dict[str, str] = {}  # radio id -> the cell's count as shown
        self.radios: set[str] = set()
        self.urls: list[str] = []
        self._open: list[str | None] = []  # the panel id each open div belongs to
        self._label: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        got = dict(attrs)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action")]
        if tag == "div":
            ident = got.get("id") or ""
            self._open.append(ident if ident.startswith("cell-") else None)
            if ident.startswith("cell-"):
                self.panels[ident] = []
        elif tag == "img" and any(self._open):
            self.panels[next(p for p in reversed(self._open) if p)].append(got["alt"] or "")
        elif tag == "input":
            self.radios.add(got["id"] or "")
        elif tag == "label" and got.get("title"):  # a matrix cell (the error list's labels have no title)
            self._label = got["for"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._open.pop()
        elif tag == "label":
            self._label = None

    def handle_data(self, data: str) -> None:
        if self._label:
            self.labels[self._label] = data


def _split(pairs: list[tuple[int, int]], scenes: int = 2) -> tuple[Split, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.vstack([np.eye(3)[[a for a, _ in pairs]], np.tile([1.0, 1.0, 0.0], (scenes, 1))])
    probs = np.full(labels.shape, 0.1)
    for row, (_, said) in enumerate(pairs):
        probs[row, said] = 0.6 + 0.01 * row
    probs[len(pairs) :] = [0.9, 0.2, 0.7]  # a scene predicted as Luffy and San"ji: not its set
    images = rng.integers(0, 256, (len(labels), 24, 24, 3), dtype=np.uint8)
    return Split(images, labels), probs


def _files(split: str, count: int) -> list[dict]:
    return [{"split": split, "index": i, "path": f"data/raw/x/<b>{split}{i}&.png"} for i in range(count)]


@pytest.fixture
def page() -> str:
    val, val_probs = _split(VAL)
    test, test_probs = _split([(2, 2), (0, 2)], scenes=0)
    files = _files("val", len(val.labels)) + _files("test", len(test.labels))
    findings = {"data/raw/x/<b>val2&.png": [Finding("label_issue", 0.93, "Na<mi>")]}
    splits, probs = {"val": val, "test": test}, {"val": val_probs, "test": test_probs}
    return gallery_page(CLASSES, splits, probs, files, findings, source="model <experiments/model>")


def test_each_cell_opens_a_panel_of_exactly_its_images(page: str) -> None:
    parsed = _Page()
    parsed.feed(page)
    counts = np.zeros((3, 3), dtype=int)
    np.add.at(counts, tuple(np.array(VAL).T), 1)
    for (actual, said), count in np.ndenumerate(counts):
        radio, panel = f"p-val-{actual}-{said}", f"cell-val-{actual}-{said}"
        if not count:  # an empty cell is no label and has no panel
            assert radio not in parsed.labels and panel not in parsed.panels
            continue
        assert parsed.labels[radio] == str(count) and radio in parsed.radios
        assert f"#{radio}:checked~.body #{panel}{{display:block}}" in page  # the CSS that opens it
        names = parsed.panels[panel]
        assert len(names) == count
        expected = {f"<b>val{row}&.png" for row, pair in enumerate(VAL) if pair == (actual, said)}
        assert set(names) == expected
    assert set(parsed.panels) == {f"cell-val-{a}-{s}" for a, s in VAL} | {"cell-test-2-2", "cell-test-0-2"}
    # The page opens on the largest confusion (Na<mi> taken for San"ji, 3 images) and lists errors first.
    assert re.search(r'id="p-val-1-2" checked', page) and page.count(" checked") == 2
    errors = re.search(r'<p class="errors">(.*?)</p>', page).group(1)
    assert errors.index("<b>3</b>") < errors.index("<b>1</b>")


def test_names_are_escaped_and_nothing_is_fetched(page: str) -> None:
    parsed = _Page()
    parsed.feed(page)
    assert "<b>val" not in page and "Na<mi>" not in page and 'San"ji' not in page
    assert "Na&lt;mi&gt;" in page and "San&quot;ji" in page and "&lt;b&gt;val0&amp;.png" in page
    assert "model &lt;experiments/model&gt;" in page
    assert parsed.urls and all(url.startswith("data:image/jpeg;base64,") for url in parsed.urls)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"url\((?!data:)", page) and "http" not in page.replace("http-equiv", "")


def test_an_audit_finding_shows_on_its_image(page: str) -> None:
    card = re.search(r'<figure class="card[^"]*">(?:(?!</figure>).)*val2&amp;\.png(?:(?!</figure>).)*', page)
    assert card and "flagged" in card.group(0)
    assert "audit: label_issue 0.93, suggests <b>Na&lt;mi&gt;</b>" in card.group(0)
    assert page.count('class="audit"') == 1
    assert "the audit flagged 1 image(s) of this split" in page


def test_scenes_have_their_own_section_with_scores(page: str) -> None:
    scenes = re.search(r'<details class="scenes">.*?</details>', page, re.S).group(0)
    assert "2 image(s) with several characters, 2 whose classes" in scenes
    assert scenes.count("<figure") == 2 and "Luffy, Na&lt;mi&gt; &rarr; Luffy, San&quot;ji" in scenes
    assert "90.0%" in scenes and "70.0%" in scenes


def test_a_crowded_cell_shows_its_first_images_and_says_how_many_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gallery, "MAX_PER_CELL", 3)
    val, probs = _split([(0, 1)] * 5, scenes=0)
    page = gallery_page(CLASSES, {"val": val}, {"val": probs}, _files("val", 5))
    parsed = _Page()
    parsed.feed(page)
    assert parsed.labels["p-val-0-1"] == "5" and len(parsed.panels["cell-val-0-1"]) == 3
    assert "and 2 more not shown (the first 3 are)" in page
    # The most doubtful first: the lowest score for the true class (rows 0..4 got 0.1 each, tied: in order).
    assert parsed.panels["cell-val-0-1"] == [f"<b>val{row}&.png" for row in range(3)]


def test_read_findings_takes_the_audits_file_or_nothing(tmp_path: Path) -> None:
    issues = tmp_path / "issues.csv"
    assert read_findings(None) == {} and read_findings(issues) == {}
    issues.write_text(
        "path,split,kind,score,given,suggested\n"
        "data/raw/a.png,val,label_issue,0.81,Luffy,Nami\n"
        "data/raw/a.png,val,near_duplicate,,Luffy,\n",
        encoding="utf-8",
    )
    found = read_findings(issues)
    assert list(found) == ["data/raw/a.png"] and found["data/raw/a.png"][0] == Finding("label_issue", 0.81, "Nami")
    assert found["data/raw/a.png"][1].kind == "near_duplicate" and np.isnan(found["data/raw/a.png"][1].score)
    issues.write_text("file,problem\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match="not the audit's issues.csv"):
        read_findings(issues)
