"""`op-classifier repeat --seeds N`: the pipeline once per seed, as one experiment with its spread.

Each seed runs prepare, tune, train and evaluate as DVC runs them (each stage its own `op-classifier
<stage>` process, the same overrides plus `seed=S`), in its own folder under paths.repeats, so the
workspace's results are untouched. Their MLflow runs nest under one parent run whose metrics are each
score's mean, standard deviation and 95% t-interval over the seeds, with a picture of the seeds.

A repeat takes its stages with it (issue 35). Each stage watches it as DVC's stages watch `dvc repro`
(STAGE_ENV, runner.stop_with_parent), so none runs on after any end of repeat, SIGKILL included.
SIGINT (to its pid or from a terminal) and SIGTERM interrupt the running stages at once, start no
other, end its run KILLED and say in one line which seeds finished (their runs and files are kept).
SIGKILL leaves a process no last word: a watchdog process then ends the run KILLED. Two repeats in
the same second get folders of their own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier import config, tracking
from op_classifier.errors import ConfigError, OpClassifierError

STAGES = ("prepare", "tune", "train", "evaluate")
SCORES = ("val_accuracy", "test_accuracy")
SHARED_PATHS = ("raw", "weights", "export", "repeats")  # every seed reads these; the rest are its own
STAGE_ENV = "OP_CLASSIFIER_REPEAT_STAGE"  # "1" for the stages repeat starts: each stops when repeat is gone
SIGNAL_POLL_S = 0.5  # how soon a signal the pool's threads took reaches the main thread
STOP_GRACE_S = 30.0  # an interrupted stage closes its run within seconds; one still running then is killed
WATCH = "--watch-run"  # this module's command line as repeat's watchdog (_watch)


class Stopped(OpClassifierError):
    """A repeat stopped by SIGINT or SIGTERM: its run ended KILLED, what finished is kept."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is: the run ends KILLED the same way (tracker.run)."""


class _Stopping(Exception):
    """A seed's next stage, refused: the repeat is stopping."""


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95% t-interval of the mean."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    sd = float(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / np.sqrt(n)) if sd > 0 else (mean, mean)
    return {"mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high)}


def run(overrides: Sequence[str], seeds: int, jobs: int = 1) -> dict[str, Any]:
    """Run the pipeline for `seeds` seeds (`jobs` at once); the per-seed scores and their spread."""
    if seeds < 2:
        raise ConfigError("--seeds must be at least 2: one seed has no spread")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    cfg = config.load(tuple(overrides))
    started, first = time.perf_counter(), cfg.seed
    folder = own_folder(Path(cfg.paths.repeats))
    chosen = [first + i for i in range(seeds)]
    tracker = tracking.make_tracker(cfg.tracking)
    name = f"repeat {seeds} seeds" + (f" {' '.join(overrides)}" if overrides else "")
    params = {"seeds": json.dumps(chosen), "overrides": " ".join(overrides) or "none", "folder": str(folder)}
    stages, watchdog = _Stages(), _Watchdog()
    done: dict[int, dict] = {}
    parent: str | None = None
    try:
        with _terminate_as_interrupt(), tracker.run(name[:250], tags={"stage": "repeat"}, params=params) as parent:
            watchdog.start(tracking.tracking_uri(cfg.tracking), parent)
            work = functools.partial(_one_seed, cfg, overrides, folder=folder, parent=parent, stages=stages)
            summary = _seeds_and_spread(tracker, work, chosen, jobs, stages, done)
    except KeyboardInterrupt as stop:
        raise _stopped(stop, chosen, done, folder, parent) from None
    finally:
        watchdog.dismiss()
    return {
        "seeds": {str(seed): done[seed] for seed in chosen},
        **{key: {stat: round(value, 4) for stat, value in stats.items()} for key, stats in summary.items()},
        "folder": str(folder),
        "run_id": parent,
        "seconds": round(time.perf_counter() - started, 1),
    }


def own_folder(root: Path) -> Path:
    """A new folder under root named by the second, then -2, -3... when another repeat took that name."""
    root.mkdir(parents=True, exist_ok=True)
    stamp, count = time.strftime("%Y%m%d-%H%M%S"), 1
    while True:
        folder = root / (stamp if count == 1 else f"{stamp}-{count}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()  # atomic: of two repeats in the same second, one gets the name, the other the next
            return folder
        count += 1


def _seeds_and_spread(
    tracker: tracking.Tracker,
    work: Callable[[int], dict],
    chosen: Sequence[int],
    jobs: int,
    stages: _Stages,
    done: dict[int, dict],
) -> dict[str, dict[str, float]]:
    """Every seed, then their spread logged to the active run; when interrupted, that of the seeds that finished."""
    try:
        _all_seeds(work, chosen, jobs, stages, done)
    except KeyboardInterrupt:
        if len(done) > 1:  # what finished is kept, in the run that then ends KILLED
            _log_spread(tracker, done)
        raise
    return _log_spread(tracker, done)


def _all_seeds(
    work: Callable[[int], dict], chosen: Sequence[int], jobs: int, stages: _Stages, done: dict[int, dict]
) -> None:
    """Each seed's result into done, `jobs` seeds at once; an interrupt or a failed seed stops the rest at once."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(work, seed): seed for seed in chosen}
    pending = set(futures)
    try:
        while pending:
            # Never a wait without end: a signal one of the pool's threads took is acted on only when the
            # main thread runs Python again (`kill -INT` then waited for every stage of the next seed).
            finished, pending = wait(pending, timeout=SIGNAL_POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                done[futures[future]] = future.result()
    except BaseException:
        _stop(futures, stages, done)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop(futures: dict[Future, int], stages: _Stages, done: dict[int, dict]) -> None:
    """Start no other stage, interrupt those running, and keep the seeds that finished meanwhile."""
    for future in futures:
        future.cancel()
    stages.interrupt()
    if wait(futures, timeout=STOP_GRACE_S).not_done:
        stages.kill()
    for future, seed in futures.items():
        if future.done() and not future.cancelled() and future.exception() is None:
            done[seed] = future.result()


def _log_spread(tracker: tracking.Tracker, done: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Each score's spread over the seeds in done, logged to the active run with a picture of the seeds."""
    seeds = sorted(done)
    scores = {key: [done[seed][key] for seed in seeds] for key in SCORES}
    summary = {key: spread(values) for key, values in scores.items()}
    tracker.set_tags({"seeds_finished": json.dumps(seeds)})
    tracker.log_metrics({f"{key}_{stat}": value for key, stats in summary.items() for stat, value in stats.items()})
    with tempfile.TemporaryDirectory() as tmp:
        from op_classifier.reports import figures

        tracker.log_artifact(figures.seed_scores(scores, seeds, Path(tmp) / "seed_scores.png"), "figures")
    return summary


def _one_seed(
    cfg: config.Config, overrides: Sequence[str], seed: int, folder: Path, parent: str | None, stages: _Stages
) -> dict:
    """The four stages of one seed, each its own process, logged to its folder's log.txt."""
    own = folder / f"seed-{seed}"
    own.mkdir(parents=True, exist_ok=True)
    paths = [f"paths.{key}={own / _inside(value)}" for key, value in vars(cfg.paths).items() if key not in SHARED_PATHS]
    nest = [f"tracking.parent_run={parent}"] if parent else []
    log, seconds = own / "log.txt", {}
    for stage in STAGES:
        command = [sys.executable, "-m", "op_classifier.cli", stage, *overrides, f"seed={seed}", *paths, *nest]
        began = time.perf_counter()
        code = stages.run(command, log, f"op-classifier {stage} ... seed={seed}")
        seconds[stage] = round(time.perf_counter() - began, 1)
        if code != 0:
            last = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
            raise OpClassifierError(f"seed {seed}: {stage} exited {code} ({last[0]}); see {log}")
    metrics = json.loads((own / cfg.paths.metrics).read_text(encoding="utf-8"))
    print(f"seed {seed}: " + "  ".join(f"{key} {metrics[key]:.4f}" for key in SCORES), flush=True)
    f1 = {name: scores["f1"] for name, scores in metrics["test_per_class"].items()}
    return {**{key: metrics[key] for key in SCORES}, "test_f1": f1, "stage_seconds": seconds, "folder": str(own)}


class _Stages:
    """The stage processes of a repeat's seeds: none starts once it is stopping, and those running hear of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopping = False

    def run(self, command: list[str], log: Path, title: str) -> int:
        """Run one stage to its end, its output appended to log under `$ title`; its exit code.

        In a process group of its own: a terminal's Ctrl-C reaches repeat alone, which passes it on once
        (a second interrupt while the stage closes its run could leave that run RUNNING)."""
        with self._lock:
            if self._stopping:
                raise _Stopping
            with log.open("a", encoding="utf-8") as out:
                out.write(f"$ {title}\n")
                out.flush()
                env = {**os.environ, STAGE_ENV: "1"}
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, process_group=0)
            self._running.add(process)
        try:
            code = process.wait()
        finally:
            with self._lock:
                self._running.discard(process)
        if self._stopping:
            raise _Stopping
        return code

    def interrupt(self) -> None:
        """Start no other stage; interrupt those running as their parent's end does (runner.stop_with_parent)."""
        with self._lock:
            self._stopping = True
            for process in self._running:
                process.send_signal(signal.SIGUSR2)

    def kill(self) -> None:
        """Kill the stages still running."""
        with self._lock:
            for process in self._running:
                process.kill()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a repeat as Ctrl-C does: its stages interrupted, its run KILLED (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _stopped(stop: KeyboardInterrupt, chosen: Sequence[int], done: dict, folder: Path, run_id: str | None) -> Stopped:
    """The one line a stopped repeat ends with: which seeds finished, where their runs and files are."""
    how, code = ("terminated", 143) if isinstance(stop, _Terminated) else ("interrupted", 130)
    finished, unfinished = [s for s in chosen if s in done], [s for s in chosen if s not in done]
    seeds = f"{_seeds(finished)} finished" if finished else "no seed finished"
    seeds += f", {_seeds(unfinished)} did not" if finished and unfinished else ""
    spread_kept = ", the finished seeds' spread logged to it" if len(finished) > 1 else ""
    where = f"MLflow run {run_id} ended KILLED (each seed's runs nested under it{spread_kept}); " if run_id else ""
    return Stopped(f"{how}: {seeds}; {where}each seed's files: {folder}/seed-<S>", code)


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


class _Watchdog:
    """A process that ends the repeat's MLflow run KILLED when the repeat dies without ending it (SIGKILL).

    It learns of that death on its stdin, a pipe only the repeat holds, closing without the word "done";
    until then it waits without MLflow loaded. It runs in a session of its own: a signal to repeat's
    process group (a terminal's Ctrl-C, `kill -- -PGID`) spares it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def start(self, uri: str, run_id: str | None) -> None:
        """Watch run_id in the store at uri (sent through the pipe: a password in a URI stays out of `ps`)."""
        if run_id is None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-m", "op_classifier.compare.repeat", WATCH, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(f"{uri}\n{run_id}\n")
        self._process.stdin.flush()

    def dismiss(self) -> None:
        """The repeat ended its run itself: the watchdog leaves without loading MLflow."""
        if self._process is None or self._process.stdin is None:
            return
        with contextlib.suppress(OSError):  # a watchdog already gone
            self._process.stdin.write("done\n")
            self._process.stdin.close()
        self._process.wait()


def _watch(pid: str) -> None:
    """The watchdog's side (`python -m op_classifier.compare.repeat --watch-run PID`): see _Watchdog."""
    uri, run_id = sys.stdin.readline().strip(), sys.stdin.readline().strip()
    if not run_id or sys.stdin.readline().strip() == "done":
        return
    why = f"op-classifier repeat (pid {pid}) was killed before it could end its run"
    try:
        if tracking.close_if_running(uri, run_id, why):
            print(f"note: {why}: MLflow run {run_id} ended KILLED", file=sys.stderr, flush=True)
    except OpClassifierError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)


def _inside(value: str) -> Path:
    """A configured path as relative: to the project (the working folder) when under it, else its root."""
    path = Path(value)
    if not path.is_absolute():
        return path
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.relative_to(path.anchor)


def table(summary: dict[str, Any]) -> str:
    """The spread as lines a person reads (the seeds' own lines were printed as they finished)."""
    lines = [f"{str(len(summary['seeds'])) + ' seeds':<15} {'mean':<6}  {'sd':<6}  95% interval (t)"]
    for key in SCORES:
        found = summary[key]
        interval = f"[{found['ci_low']:.4f}, {found['ci_high']:.4f}]"
        lines.append(f"{key:<15} {found['mean']:.4f}  {found['sd']:.4f}  {interval}")
    where = f"MLflow run {summary['run_id']} (the seeds' runs nested under it); " if summary["run_id"] else ""
    lines.append(f"{where}each seed's files: {summary['folder']}/seed-<S>")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == [WATCH]:
    _watch(sys.argv[2])
