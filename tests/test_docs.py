"""The front page stays short and every link in the documentation leads somewhere: files and headings."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
FRONT_PAGE_MAX_LINES = 150
COMMANDS_WITHIN = 20  # lines: a new user sees how to run it and test it before anything else

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
# [text](target) and ![alt](target), an optional "title" after the target; <target> for one with spaces
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*(?:[ \t]#+[ \t]*)?$", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose(path: Path) -> str:
    """The page without its code: fenced blocks and inline code spans hold examples, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def _links(path: Path) -> list[str]:
    """Every link target of a page that points into the repository (relative paths and #anchors)."""
    prose = _prose(path)
    targets = [target.strip("<>") for target in LINK.findall(prose) + REFERENCE.findall(prose)]
    return [target for target in targets if not SCHEME.match(target) and not target.startswith("//")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation but - and _ dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page's headings make, repeated headings numbered as GitHub numbers them (-1, -2)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def _resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file a link leads to and its anchor ('' for none)."""
    file_part, _, anchor = target.partition("#")
    file_part = file_part.split("?", 1)[0]
    return ((page.parent / file_part).resolve() if file_part else page), anchor


def test_the_slug_follows_githubs_rules() -> None:
    assert (
        slug("Is the gain real? Comparisons that know their noise")
        == "is-the-gain-real-comparisons-that-know-their-noise"
    )
    assert slug("experiment=full_search") == "experimentfull_search"
    assert slug("Serving at the hardware's speed (issue 39)") == "serving-at-the-hardwares-speed-issue-39"
    assert (
        slug("oneDNN: `free(): invalid size` with 8 or 12 filters") == "onednn-free-invalid-size-with-8-or-12-filters"
    )


def test_the_link_scan_skips_code_and_reads_titles(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '[a](a.md) ![b](img/b.png "B") [c](https://example.com) `[d](d.md)` [e](#e)\n\n'
        "```\n[f](f.md)\n```\n\n[g]: g.md\n",
        encoding="utf-8",
    )
    assert _links(page) == ["a.md", "img/b.png", "#e", "g.md"]


def test_the_readme_is_a_short_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= FRONT_PAGE_MAX_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
    first = "\n".join(lines[:COMMANDS_WITHIN])
    for command in ("make run", "make test"):
        assert command in first, f"`{command}` is not within README.md's first {COMMANDS_WITHIN} lines"


def test_every_docs_page_is_linked() -> None:
    """A page nothing links to is a page nobody finds: the README or another docs page must name it."""
    linked = {
        _resolve(page, target)[0]
        for page in PAGES
        for target in _links(page)
        if _resolve(page, target)[0] != page.resolve()
    }
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_link_resolves(page: Path) -> None:
    """Every relative link leads to a file, and every #anchor to a heading of it."""
    broken = []
    for target in _links(page):
        path, anchor = _resolve(page, target)
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO).as_posix()}")
    assert broken == []


SHELL_BLOCK = re.compile(r"^```(?:bash|sh|console|shell)?\s*$\n(.*?)^```", re.S | re.M)
INLINE_COMMAND = re.compile(r"`(?:\.venv/bin/)?(?:op-classifier|make) [^`\n]+`")  # a command in a sentence
PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|\[--|\b(?:N|NAME|PROJECT|FOLDER)\b")  # usage forms, not commands


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every `op-classifier` and `make` command in the pages' code blocks and inline code, as (page, argv),
    placeholders left out."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        spans = [span.strip("`") for span in INLINE_COMMAND.findall(FENCE.sub("", text))]
        for block in [*SHELL_BLOCK.findall(text), *spans]:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip().removeprefix("$ ")
                for part in re.split(r"&&|\|\||;|\||\s\d?>>?", line):  # commands, not their redirections
                    if PLACEHOLDER.search(part):
                        continue
                    try:
                        argv = shlex.split(part)
                    except ValueError:
                        continue
                    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # FOO=1 command ...
                        argv = argv[1:]
                    named = (
                        len(argv) == 2 and Path(argv[0]).name == "op-classifier"
                    )  # the command's name, in a sentence
                    if argv and Path(argv[0]).name in ("op-classifier", "make") and not named:
                        found.append((page.relative_to(REPO).as_posix(), [Path(argv[0]).name, *argv[1:]]))
    return found


def test_the_pages_show_commands_that_exist() -> None:
    """Every `op-classifier ...` the pages show parses with the real command line; every `make X` is a target."""
    from op_classifier.cli import build_parser

    shown = _shown_commands()
    assert len(shown) > 20, "the scan found too few commands: it is not reading the code blocks"
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))
    wrong = []
    for page, argv in shown:
        if argv[0] == "make":
            wrong += [f"{page}: make {goal}" for goal in argv[1:] if "=" not in goal and goal not in targets]
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                build_parser().parse_args(argv[1:])
        except SystemExit:
            wrong.append(f"{page}: {shlex.join(argv)}")
    assert wrong == []


RUNNABLE = "<!-- runnable -->"  # the line before a shell block tests/test_docs_run.py runs in a fresh copy
MARKED_BLOCK = re.compile(r"^(<!-- runnable -->\n)?```(bash|sh|shell)\s*\n(.*?)^```", re.S | re.M)
# The shell blocks not run in a fresh copy, by how their first line starts, and why; the rest run there.
NOT_RUN = {
    "rm -rf data/raw && cp -r /path/to/my/images": "a user's own folder of images",
    "op-classifier compose data.classes=null model=efficientnet_lite2": "lite2's recipe on a user's images",
    "op-classifier sample --out data/raw [--per-class N]": "a usage form",
    "op-classifier train --processes 2 [overrides]": "a usage form; tests/test_distributed.py runs it",
    "make tracking-server ": "needs PostgreSQL; tests/test_tracking_server.py runs it",
    "dvc exp run --queue": "two queued trainings; tests/test_dvc_pipeline.py runs DVC's queue",
    ".venv/bin/op-classifier compose experiment=full_search": "13 minutes a seed; tests/test_search.py runs it tiny",
    "make serve ": "its other lines name version 3 and port 8080; the LiteRT block serves nothing, this one would",
    'printf \'{"instances"': "asks a running server; tests/test_serve.py sends these bodies over HTTP",
    "python -c 'import json, sys, numpy as np": "asks a running server; tests/test_serve.py sends these bodies",
    "docker run -p 8501:8501": "Docker and TensorFlow Serving's image are not on this machine",
}


def _not_run(block: Block) -> str | None:
    return next((key for key in NOT_RUN if block.lines[0].startswith(key)), None)


class Block:
    """A fenced shell block of a page: where it is (page:line) and its command lines."""

    def __init__(self, where: str, lines: list[str], runnable: bool) -> None:
        self.where, self.lines, self.runnable = where, lines, runnable


def shell_blocks(page: Path) -> list[Block]:
    """The page's bash blocks, each marked RUNNABLE or not."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for found in MARKED_BLOCK.finditer(text):
        line = text[: found.start(3)].count("\n")
        lines = [row.strip() for row in found.group(3).splitlines() if row.strip()]
        blocks.append(Block(f"{page.relative_to(REPO).as_posix()}:{line}", lines, bool(found.group(1))))
    return blocks


def runnable_blocks(page: Path) -> list[Block]:
    """The page's blocks marked RUNNABLE, in its order."""
    return [block for block in shell_blocks(page) if block.runnable]


def test_every_shell_block_is_run_or_says_why_not() -> None:
    """A new block on a page is either marked runnable (and run in a fresh copy) or listed in NOT_RUN."""
    unmarked = [block for page in PAGES if page.name != "decisions.md" for block in shell_blocks(page)]
    unmarked = [block for block in unmarked if not block.runnable]
    assert [f"{block.where}: {block.lines[0]}" for block in unmarked if _not_run(block) is None] == []
    assert set(NOT_RUN) <= {_not_run(block) for block in unmarked}, "NOT_RUN names a block no page shows unmarked"
    for block in [block for page in PAGES for block in runnable_blocks(page)]:
        assert not any(line.endswith("\\") for line in block.lines), f"{block.where}: one command a line"
