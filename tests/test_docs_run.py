"""The shell blocks README.md and docs/ mark runnable, run as written, in order, in a fresh copy (issue 40, item 7).

A block is runnable when the line before its fence is RUNNABLE (an HTML comment: GitHub shows nothing). Its lines
run one by one in bash, in the copy, with the venv's bin first on PATH (as after `source .venv/bin/activate`).
The copy starts with the built-in sample at the tiny experiment's size (`op-classifier compose experiment=tiny`:
the saved choice every later command composes), so the walk takes minutes, not an hour, and a champion target of 0
(a tiny model's score is below the real one). A server (`make ui`,
`make serve`) is started, must answer /health, and is stopped. photos/ and shots/, the serving page's folders of
a user's own images, hold sample images. Every other shell block is parsed by tests/test_docs.py and says in
NOT_RUN there why it is not run here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_repo, free_port, run_in, wait_until_up
from tests.test_docs import RUNNABLE, runnable_blocks

pytestmark = pytest.mark.slow
# Each page's blocks in its own order, the pages in this one: the tracking page's walk-through makes the commit
# and the experiment the README's `compare HEAD workspace` compares.
ORDER = ("docs/tracking.md", "README.md", "docs/pipeline.md", "docs/data.md", "docs/serving.md")
SERVERS = ("make ui", "make serve")  # they run until stopped: started, asked, stopped
SKIPPED = {"make test": "the suite itself (CI runs it)", "xdg-open": "opens a desktop viewer"}
BLOCKS = [block for page in ORDER for block in runnable_blocks(REPO / page)]


def test_every_runnable_block_is_on_a_page_the_walk_takes() -> None:
    marked = {path.relative_to(REPO).as_posix() for path in [REPO / "README.md", *REPO.glob("docs/*.md")]}
    marked = {page for page in marked if RUNNABLE in (REPO / page).read_text(encoding="utf-8")}
    assert marked <= set(ORDER), marked - set(ORDER)
    assert len(BLOCKS) >= 8


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh copy with the venv, the tiny sample and its composed config, committed; the shell's environment."""
    root = copy_repo(tmp_path_factory.mktemp("docs") / "repo")
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    with (root / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".venv\n")  # a link, which the repository's /.venv/ (a folder) does not match
    run_in(root, "op-classifier", "sample", "--out", "data/raw", "--per-class", "8", "--scenes", "4")
    for folder, pattern in (("photos", "Luffy/000[0-2].jpg"), ("shots/a", "Nami/000[0-1].jpg")):
        (root / folder).mkdir(parents=True)
        for image in (root / "data" / "raw").glob(pattern):
            (root / folder / f"{image.stem}.png").write_bytes(_png(image))
    # A tiny model scores below the champion's target: the target goes to 0 so that a champion exists, as after
    # `make run` on the full sample, for the blocks that name it.
    run_in(root, "op-classifier", "compose", "experiment=tiny", "tracking.champion_target=0")
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in _ME.items()}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= identity | {"PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env["PORT"] = str(free_port())  # make ui / make serve listen there
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "tiny sample"], cwd=root, env=env, check=True)
    return root, env


_ME = {"NAME": "docs", "EMAIL": "docs@example.com"}


def _png(image: Path) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(image).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_the_block_runs_in_a_fresh_copy(walk: tuple[Path, dict[str, str]], block) -> None:
    root, env = walk
    for line in block.lines:
        if any(line.startswith(command) for command in SKIPPED):
            continue
        if line.startswith(SERVERS):
            _serves(line, root, env, block.where)
            continue
        done = subprocess.run(["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, (
            f"{block.where}: `{line}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def _serves(line: str, root: Path, env: dict[str, str], where: str) -> None:
    """Start a server's command, wait for its /health to answer 200 on PORT, stop it."""
    with tempfile.TemporaryFile("w+") as said:
        server = subprocess.Popen(
            ["bash", "-c", line], cwd=root, env=env, stdout=said, stderr=subprocess.STDOUT, start_new_session=True
        )

        def output() -> str:
            said.seek(0)
            return f"{where}: `{line}`: {said.read()}"

        try:
            wait_until_up(f"http://127.0.0.1:{env['PORT']}/health", server, 180, said=output)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
