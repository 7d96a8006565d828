"""Shared fixtures: configs composed from the real conf/ with small overrides."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from op_classifier import config

REPO = Path(__file__).resolve().parents[1]

# `make test` hands whole files to two workers (--dist loadfile) in collection order, with xdist's
# reordering by test count off: that put the two longest files, one or two tests each, last, and one
# worker ran alone for their last 100 s. Longest first (measured with --durations=0), the rest after.
LONGEST_FIRST = (
    "test_dvc_pipeline.py",
    "test_jax.py",
    "test_serve.py",
    "test_pipeline.py",
    "test_prepare.py",
    "test_export.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest test files first, so that the two workers finish together."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


TINY = ("experiment=tiny",)
DATA = ("raw", "prepared")  # the paths a test keeps in a tiny project when it moves the rest


def compose(*overrides: str) -> config.Config:
    """The real conf/ composed with overrides and validated, as a stage receives it."""
    return config.load(overrides, conf_dir=REPO / config.CONF_DIR)


def paths_under(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Overrides putting every configured path but those in skip under root."""
    return [f"paths.{key}={root / value}" for key, value in vars(compose().paths).items() if key not in skip]


def tiny_cfg(root: Path, *overrides: str) -> config.Config:
    """conf/ + tiny budgets, every path and the MLflow store inside root."""
    return compose(*TINY, *paths_under(root), f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *overrides)


def mlflow_client(root: Path):  # mlflow stays out of conftest's imports: no return annotation
    """An MLflow client of a tiny project's store."""
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with conf/, the tiny sample and its prepared data (made once per module)."""
    from op_classifier.data import sample
    from op_classifier.stages import prepare

    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "conf", root / "conf")
    sample.generate(root / "data/raw", per_class=8, scenes=4)
    prepare.run(tiny_cfg(root))
    return root


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., config.Config]:
    """Compose conf/ with every path moved under tmp_path, plus the given overrides."""

    def _make(*overrides: str) -> config.Config:
        data = (f"paths.raw={tmp_path / 'raw'}", f"paths.prepared={tmp_path / 'prepared'}")
        return compose(*paths_under(tmp_path, skip=("raw", "prepared")), *data, *overrides)

    return _make


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A committed git copy of the project's files (tracked and not ignored), for real DVC commands."""
    return copy_repo(tmp_path / "repo")


def copy_repo(dst: Path) -> Path:
    """Copy the project's files (tracked and not ignored) to dst as a fresh git repository, committed."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-q", "-m", "copy")
    return dst


def run_in(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command of the venv (dvc, op-classifier) in cwd, as a user would in a shell."""
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120, said: Callable[[], str] = str) -> None:
    """Poll url until it answers 200; fail with said() (the server's output) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited {process.returncode}: {said()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:g} s: {said()[-3000:]}")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
