"""`op-classifier repeat` as a good citizen (issue 35): its stages die with it, its run ends, a folder of its own.

The real command at the tiny budget in a subprocess, real signals, MLflow on SQLite; what a user notices:
the exit code and its one line, the runs' status, and no stage process left running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from op_classifier.compare import repeat
from op_classifier.errors import OpClassifierError
from tests.conftest import REPO, TINY

CLI = str(Path(sys.executable).parent / "op-classifier")
# A search of minutes: a stage left behind by its repeat is seen running on, not finishing by chance.
LONG_SEARCH = ("tuner.max_trials=40", "tuner.epochs=3")
T = TypeVar("T")


def _start(root: Path, name: str, family: list[psutil.Process], *overrides: str) -> subprocess.Popen:
    """`op-classifier repeat --seeds 2` in root, with its own store (<name>.db) and folder (repeats-<name>)."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    own = [f"tracking.uri=sqlite:///{root / name}.db", f"paths.repeats={root / f'repeats-{name}'}"]
    command = [CLI, "repeat", "--seeds", "2", *TINY, *overrides, *own]
    proc = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )
    family.append(psutil.Process(proc.pid))
    return proc


def _as_from_a_terminal() -> None:
    # A test run in the background inherits SIGINT ignored (and Python then never raises Ctrl-C):
    # a repeat started from a terminal or by a supervisor takes SIGINT's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _runs(root: Path, name: str, query: str) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / name}.db")
    experiment = client.get_experiment_by_name("op-classifier")
    return [] if experiment is None else client.search_runs([experiment.experiment_id], query)


def _status(root: Path, name: str, run: Any) -> str:
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root / name}.db").get_run(run.info.run_id).info.status


def _wait_for(found: Callable[[], T], timeout: float, what: str) -> T:
    """found()'s first true answer, asked every half second for at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (answer := found()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)
    return answer


def _running(processes: list[psutil.Process]) -> list[str]:
    """The command lines of those still running (a zombie is gone: only its exit status is left)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(process.cmdline())[:160])
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def family() -> Iterator[list[psutil.Process]]:
    """A test's repeat and the processes it saw it start: any left at the end are killed (before: orphans)."""
    seen: list[psutil.Process] = []
    yield seen
    for process in seen:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def _until_tune_runs(root: Path, name: str, proc: subprocess.Popen, family: list[psutil.Process]) -> Any:
    """The first seed's tune run, once RUNNING; the repeat's processes then, added to family."""
    query = "tags.stage = 'tune' and attributes.status = 'RUNNING'"
    (tune,) = _wait_for(lambda: _alive(proc) and _runs(root, name, query), 240, "a running tune stage")
    family.extend(psutil.Process(proc.pid).children(recursive=True))
    return tune


def _alive(proc: subprocess.Popen) -> bool:
    """True while proc runs; once it has exited, an AssertionError with what it said."""
    if proc.poll() is None:
        return True
    out, err = proc.communicate()
    raise AssertionError(f"repeat exited {proc.returncode} early: {(out + err)[-2000:]}")


def _the_repeat_run(root: Path, name: str) -> Any:
    (run,) = _runs(root, name, "tags.stage = 'repeat'")
    return run


@pytest.mark.slow
def test_sigkill_to_repeat_stops_its_stages_and_its_run_ends_killed(
    tiny_project: Path, family: list[psutil.Process]
) -> None:
    """Case 10: before, its tune ran on under pid 1 and its MLflow run stayed RUNNING for ever.

    Nothing runs in a process killed by SIGKILL: its stages see it gone (runner.stop_with_parent) and
    stop, their runs KILLED; a watchdog it started ends its own run KILLED."""
    proc = _start(tiny_project, "sigkill", family, *LONG_SEARCH)
    tune = _until_tune_runs(tiny_project, "sigkill", proc, family)
    proc.kill()
    proc.wait()
    _wait_for(lambda: not _running(family), 30, f"its processes gone ({_running(family)})")
    parent = _the_repeat_run(tiny_project, "sigkill")
    assert _wait_for(lambda: _status(tiny_project, "sigkill", parent) != "RUNNING", 10, "its run ended")
    assert _status(tiny_project, "sigkill", parent) == "KILLED"
    assert _status(tiny_project, "sigkill", tune) == "KILLED"


@pytest.mark.slow
def test_sigterm_to_repeat_stops_its_stages_and_ends_its_run_killed_in_one_line(
    tiny_project: Path, family: list[psutil.Process]
) -> None:
    """Case 10: before, SIGTERM killed repeat alone: the same orphans and a run RUNNING for ever."""
    proc = _start(tiny_project, "sigterm", family, *LONG_SEARCH)
    tune = _until_tune_runs(tiny_project, "sigterm", proc, family)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: terminated"), err[-2000:]
    assert _running(family) == []  # repeat exits after its stages
    assert _status(tiny_project, "sigterm", _the_repeat_run(tiny_project, "sigterm")) == "KILLED"
    assert _status(tiny_project, "sigterm", tune) == "KILLED"


@pytest.mark.slow
def test_sigint_to_repeats_pid_stops_at_once_and_keeps_the_finished_seed(
    tiny_project: Path, family: list[psutil.Process]
) -> None:
    """Case 11: SIGINT to repeat's pid alone (`kill -INT`, a supervisor), once seed 42 finished.

    Before: honoured only after every stage of seed 43 had run, and then no word of seed 42. Now the
    running stage is interrupted, no other starts, and the line says what finished (its runs kept)."""
    proc = _start(tiny_project, "sigint", family, "tuner=none")
    first = proc.stdout.readline() if proc.stdout else ""
    assert first.startswith("seed 42: "), first + (proc.stderr.read() if proc.poll() is not None else "")
    family.extend(psutil.Process(proc.pid).children(recursive=True))
    os.kill(proc.pid, signal.SIGINT)
    began = time.monotonic()
    out, err = proc.communicate(timeout=45)
    stopped = time.monotonic() - began
    assert proc.returncode == 130, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: interrupted"), err[-2000:]
    assert "seed 42 finished" in err and "43" in err, err
    assert stopped < 30 and _running(family) == []
    parent = _the_repeat_run(tiny_project, "sigint")
    assert _status(tiny_project, "sigint", parent) == "KILLED"
    nested = _runs(tiny_project, "sigint", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    finished = {run.data.params.get("seed") for run in nested if run.info.status == "FINISHED"}
    assert "42" in finished and "43" not in finished
    assert all(run.info.status != "RUNNING" for run in nested)
    (log,) = (tiny_project / "repeats-sigint").glob("*/seed-43/log.txt")
    assert len(re.findall(r"^\$ op-classifier ", log.read_text(encoding="utf-8"), re.M)) <= 1  # none started after


def test_two_repeats_in_the_same_second_get_folders_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 12: before, both used experiments/repeats/<second>/, wrote into one log.txt and the second
    read the first's files. Here each repeat's first stage fails at once (no images): cheap, and real."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    stamp, clock = "%Y%m%d-%H%M%S", time.strftime
    monkeypatch.setattr(
        time, "strftime", lambda form, *when: "20250101-120000" if form == stamp else clock(form, *when)
    )
    overrides = [*TINY, "tracking=none", f"paths.raw={tmp_path / 'empty'}", f"paths.repeats={tmp_path / 'repeats'}"]
    logs = []
    for _ in range(2):
        with pytest.raises(OpClassifierError, match="seed 42: prepare exited") as caught:
            repeat.run(overrides, 2)
        logs.append(Path(re.findall(r"see (\S+log\.txt)", str(caught.value))[0]))
    assert logs[0] != logs[1]
    assert [log.parent.parent.name for log in logs] == ["20250101-120000", "20250101-120000-2"]
    for log in logs:
        assert log.read_text(encoding="utf-8").count("$ op-classifier prepare") == 1


def test_a_sigint_one_of_its_threads_takes_still_stops_the_seeds_at_once(tmp_path: Path) -> None:
    """Case 11: the kernel may hand `kill -INT` to any thread; Python acts on it in the main thread only.

    Before, the main thread waited on the seeds without end and took the interrupt only when the stage
    running then had ended (here 20 s of `sleep`; a probe of the real command waited 73 s for seed 43)."""
    stages = repeat._Stages()

    def seed(number: int) -> dict:
        time.sleep(0.5)  # the main thread waits on the seeds by now
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread takes it, not the main one
        stages.run(["sleep", "20"], tmp_path / "log.txt", "sleep 20")
        return {}

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a repeat started from a terminal
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            repeat._all_seeds(seed, [42], 1, stages, {})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - began < 5
