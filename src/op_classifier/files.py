"""Folders and processes shared by the commands: outputs that appear whole or not at all, worker pools."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def staged_output(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new folder beside target; it becomes target only if the block succeeds.

    A crash leaves target as it was. overwrite=False never replaces a target that holds files
    (an OSError then), for outputs that must not clobber the user's.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    staging = _sibling(target, "tmp")
    try:
        yield staging
        if overwrite:
            _swap_into_place(staging, target)
        else:
            os.replace(staging, target)  # renames over an empty folder, refuses one with files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sibling(target: Path, kind: str) -> Path:
    # mkdir rather than tempfile.mkdtemp: mkdtemp's 0700 would make the output private to its author.
    folder = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    return folder


def _remove_abandoned(target: Path) -> None:
    # A killed run (SIGKILL, power loss) cannot clean up after itself; its staging copy can be gigabytes.
    for folder in target.parent.glob(f".{target.name}.*-*-*"):
        kind, _, rest = folder.name[len(target.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is someone else's
        return True
    return True


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = _sibling(target, "old")
    target.rename(old / target.name)
    try:
        new.rename(target)
    except OSError:
        (old / target.name).rename(target)  # put the previous output back
        raise
    finally:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)


def cpu_count() -> int:
    """Cores this process may use (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunk_size(jobs: int, workers: int) -> int:
    """Jobs handed to a worker at a time: about 8 hand-outs per worker, at most 32 jobs each."""
    return max(1, min(32, jobs // (workers * 8)))


def worker_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Any:
    """A process pool whose workers leave Ctrl-C to the parent (a traceback from each would bury its message).

    spawn, not fork: the caller may have TensorFlow's threads running, which a forked child inherits broken.
    """
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_start, initargs=(initializer, initargs))


def _start(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
