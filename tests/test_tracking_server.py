"""The team tracking server (PostgreSQL + mlflow server) and concurrent clients: SQLite, the server, DVC's queue."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from op_classifier.tracking import server as tracking_server
from tests.conftest import REPO, free_port, run_in

CLI = str(Path(sys.executable).parent / "op-classifier")

# One client: waits at the gate with everything imported, then opens a run through our tracking module,
# so all of them reach the store within milliseconds of each other.
CLIENT = """
import sys, time
from pathlib import Path
from op_classifier import tracking
from op_classifier.config import TrackingConfig
from op_classifier.runner import guarded

uri, experiment, gate, index = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
(gate.parent / f"ready-{index}").touch()
while not gate.exists():
    time.sleep(0.01)
cfg = TrackingConfig(kind="mlflow", uri=uri, experiment=experiment, model_name="m",
                     champion_metric="val_accuracy", champion_target=0.5, promotion="significant",
                     alpha=0.05, parent_run=None)

def one_run():
    tracker = tracking.make_tracker(cfg)
    with tracker.run(f"client-{index}", tags={"client": index}):
        tracker.log_metrics({"x": float(index)})

sys.exit(guarded(one_run))
"""


def _client_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)  # the store is the one each test names
    return env


def _concurrent_clients(uri: str, experiment: str, count: int, work: Path) -> list[subprocess.CompletedProcess]:
    gate = work / "go"
    work.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, uri, experiment, str(gate), str(i)],
            env=_client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    deadline = time.monotonic() + 300
    while len(list(work.glob("ready-*"))) < count:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "clients did not start"
        time.sleep(0.1)
    gate.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _runs_by_experiment(uri: str) -> dict[str, list]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    return {exp.name: client.search_runs([exp.experiment_id]) for exp in client.search_experiments()}


def _assert_all_landed(uri: str, experiment: str, done: list[subprocess.CompletedProcess], count: int) -> None:
    assert [d.returncode for d in done] == [0] * count, [d.stderr[-500:] for d in done]
    runs = _runs_by_experiment(uri)
    assert sorted(r.data.tags["client"] for r in runs[experiment]) == [str(i) for i in range(count)]
    assert not runs.get("Default"), "a run fell back to the Default experiment"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "tracking-server", *args], capture_output=True, text=True, env=_client_env())


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# --- bad input: fast ---


def test_a_taken_port_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(_cli("start", "--dir", str(folder), "--port", str(port)))
    assert f"port {port} on 127.0.0.1 is taken" in line
    assert not folder.exists()  # no cluster, no state, no orphan postgres


def test_missing_postgres_programs_are_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    line = _one_error_line(
        _cli("start", "--dir", str(folder), "--port", str(free_port()), "--pg-bin", str(tmp_path / "nowhere"))
    )
    assert "initdb" in line and "--pg-bin" in line
    assert not folder.exists()


@pytest.mark.parametrize("action", ["stop", "status"])
def test_no_server_to_stop_or_ask_is_one_line(tmp_path: Path, action: str) -> None:
    line = _one_error_line(_cli(action, "--dir", str(tmp_path / "srv")))
    assert "no tracking server" in line


# --- concurrent clients on a fresh SQLite store: slow (six TensorFlow imports) ---


@pytest.mark.slow
def test_six_concurrent_clients_on_a_fresh_sqlite_store_all_land(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _concurrent_clients(uri, "concurrent", 6, tmp_path / "gate")
    _assert_all_landed(uri, "concurrent", done, 6)


# --- the server: slow ---


def _postgres_programs() -> Path | None:
    try:
        return tracking_server._pg_binaries(None)
    except tracking_server.ServerError:
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Path]]:
    """A started tracking server in a fresh folder: (MLFLOW_TRACKING_URI, folder); stopped by its pids."""
    if _postgres_programs() is None:
        pytest.skip("PostgreSQL's server programs (initdb, postgres) are not installed: apt-get install postgresql")
    # Not under pytest's tmp folder (mode 0700): PostgreSQL runs as another user when we are root.
    base = Path(tempfile.mkdtemp(prefix="op-classifier-server-"))
    base.chmod(0o755)
    folder = base / "srv"
    started = _cli("start", "--dir", str(folder), "--port", str(free_port()))
    try:
        assert started.returncode == 0, started.stderr
        summary = json.loads(started.stdout)
        yield summary["MLFLOW_TRACKING_URI"], folder
    finally:
        state = tracking_server.State.load(folder / tracking_server.STATE_FILE)
        if state is not None:
            _cli("stop", "--dir", str(folder))
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_server_keeps_runs_in_postgresql_and_refuses_its_own_port(server: tuple[str, Path], tmp_path: Path) -> None:
    uri, folder = server
    status = _cli("status", "--dir", str(folder))
    assert status.returncode == 0 and json.loads(status.stdout)["MLFLOW_TRACKING_URI"] == uri
    state = tracking_server.State.load(folder / tracking_server.STATE_FILE)
    assert state.backend_uri.startswith("postgresql+psycopg2://")
    assert (folder / tracking_server.STATE_FILE).stat().st_mode & 0o077 == 0  # it holds the db password
    assert "already running" in _cli("start", "--dir", str(folder), "--port", str(state.port)).stdout
    other = tmp_path / "other"
    line = _one_error_line(_cli("start", "--dir", str(other), "--port", str(state.port)))
    assert "is taken" in line and not other.exists()


@pytest.mark.slow
def test_six_concurrent_clients_of_the_server_all_land(server: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = server
    done = _concurrent_clients(uri, "concurrent-server", 6, tmp_path / "gate")
    _assert_all_landed(uri, "concurrent-server", done, 6)
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("concurrent-server").experiment_id])[0]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, not a client path


def _wait_for_queue(repo: Path, timeout: float = 1200) -> str:
    deadline = time.monotonic() + timeout
    while True:
        shown = run_in(repo, "dvc", "queue", "status").stdout
        if "Queued" not in shown and "Running" not in shown and "0 active" in shown:
            return shown
        assert time.monotonic() < deadline, shown
        time.sleep(5)


def _queued_experiments_land(repo: Path, uri: str) -> None:
    """4 experiments queued, run by `dvc queue start -j 2`: 4 training runs named by their DVC experiments."""
    run_in(repo, "op-classifier", "sample", "--out", "data/raw", "--per-class", "6", "--scenes", "2")
    run_in(repo, "dvc", "commit", "-f", "data.dvc")  # the queue's copies fetch data/raw from the cache
    # One one-epoch trial, so the queued experiments run a search too (the default, tuner=none, runs none).
    tiny = ("experiment=tiny", "tuner.max_trials=1", "train.epochs=1")
    run_in(repo, "op-classifier", "compose", *tiny)
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", "tiny")
    names = [f"lr-{i}" for i in range(4)]
    for i, name in enumerate(names):
        sets = [arg for override in (*tiny, f"train.learning_rate=0.00{i + 1}") for arg in ("-S", override)]
        run_in(repo, "dvc", "exp", "run", "--queue", "-n", name, *sets)
    run_in(repo, "dvc", "queue", "start", "-j", "2")
    shown = _wait_for_queue(repo)
    assert shown.count("Success") == 4, shown + "".join(
        run_in(repo, "dvc", "queue", "logs", n, check=False).stdout for n in names
    )

    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("op-classifier")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert sorted(r.data.tags.get("dvc_experiment") for r in runs) == names
    assert sorted(r.data.params["train.learning_rate"] for r in runs) == ["0.001", "0.002", "0.003", "0.004"]
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in runs)
    assert not client.search_runs(["0"]), "a run fell back to the Default experiment"


def _no_queue_workers(repo: Path) -> None:
    """Every `dvc exp queue-worker` of this copy has exited (they stop when the queue is empty)."""
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline", "cwd"])
        if p.info["cmdline"] and "queue-worker" in p.info["cmdline"] and p.info["cwd"] == str(repo)
    ]
    assert not left, left


@pytest.mark.slow
def test_queued_experiments_run_two_at_a_time_land_in_the_servers_postgresql(
    server: tuple[str, Path], repo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # inherited by `dvc queue start`'s workers and their stages
    _queued_experiments_land(repo_copy, uri)
    _no_queue_workers(repo_copy)


@pytest.mark.slow
def test_queued_experiments_run_two_at_a_time_land_in_a_fresh_sqlite_store(
    repo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The default store: mlflow.db at $DVC_ROOT, the repository the queue belongs to, not a worker's copy.
    _queued_experiments_land(repo_copy, f"sqlite:///{repo_copy / 'mlflow.db'}")
    _no_queue_workers(repo_copy)


@pytest.mark.slow
def test_stop_ends_both_processes_by_their_ids() -> None:
    if _postgres_programs() is None:
        pytest.skip("PostgreSQL's server programs (initdb, postgres) are not installed: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="op-classifier-server-"))
    base.chmod(0o755)
    folder = base / "srv"
    try:
        started = _cli("start", "--dir", str(folder), "--port", str(free_port()))
        assert started.returncode == 0, started.stderr
        state = tracking_server.State.load(folder / tracking_server.STATE_FILE)
        stopped = _cli("stop", "--dir", str(folder))
        assert stopped.returncode == 0, stopped.stderr
        assert not state.mlflow.alive() and not state.postgres.alive()
        assert not (folder / tracking_server.STATE_FILE).exists()
        again = _cli("start", "--dir", str(folder), "--port", str(free_port()))  # the same cluster, reused
        assert again.returncode == 0, again.stderr
        assert _cli("stop", "--dir", str(folder)).returncode == 0
    finally:
        if (folder / tracking_server.STATE_FILE).exists():
            _cli("stop", "--dir", str(folder))
        shutil.rmtree(base, ignore_errors=True)
