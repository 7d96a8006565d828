"""The tracking server's processes: known by pid and start time, waited for, stopped with their group."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from op_classifier.errors import OpClassifierError, first_line

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


class ServerError(OpClassifierError):
    """The tracking server cannot be started, stopped or found."""


@dataclass
class Process:
    """A started process, known by its id and its start time (so a reused pid is never signalled)."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> Process:
        """The running process pid."""
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        """Whether this very process (not a later one with its pid) still runs."""
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.create_time and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def wait_until(ready: Callable[[], bool], process: Process, what: str, log: Path) -> None:
    """Poll ready() until it holds; a process that exits or a timeout is one line, the log's last."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if not process.alive():
            raise ServerError(f"{what} exited while starting: {last_line(log)} (log: {log})")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not answer within {START_TIMEOUT_S} s (log: {log})")
        time.sleep(0.3)


def last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if lines:
            return first_line(Exception(lines[-1]))
    return "no output"


def stop_process(process: Process, what: str, sig: signal.Signals, group: bool = False) -> None:
    """Signal the process (its group when it leads one we made), then wait until it and its group are gone."""
    if not process.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            os.kill(process.pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_members(process, group)):
        if time.monotonic() > deadline:
            raise ServerError(f"{what} (pid {process.pid}) did not stop within {STOP_TIMEOUT_S} s")
        time.sleep(0.2)


def _members(process: Process, group: bool) -> Iterator[bool]:
    yield process.alive()
    if group:  # any process left in the group (uvicorn's workers); zombies are gone already
        for proc in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                yield os.getpgid(proc.pid) == process.pid and proc.info["status"] != psutil.STATUS_ZOMBIE
