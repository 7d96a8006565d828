"""Keras Tuner's distributed search over loopback: `op-classifier tune --workers N`, a killed worker, bad input."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from op_classifier import cli
from op_classifier.data import sample
from op_classifier.stages import prepare
from tests.conftest import REPO, compose, free_port, paths_under
from tests.test_quiet import assert_short

CLI = str(Path(sys.executable).parent / "op-classifier")
TINY = ("experiment=tiny",)
KT_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conf/ and the tiny sample prepared, made once for the module."""
    root = tmp_path_factory.mktemp("cluster")
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(root / "conf")], check=True)
    sample.generate(root / "data/raw", per_class=8, scenes=4)
    prepare.run(compose(*TINY, *paths_under(root)))
    return root


@pytest.fixture
def project(prepared: Path, tmp_path: Path) -> Path:
    """A fresh project folder per test, as a user's checkout: its own store, so no MLflow client cached
    in this process reads another test's (deleted) store."""
    root = tmp_path / "project"
    shutil.copytree(prepared, root)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in KT_ENV}
    return {**env, **extra}


def _leaderboard(root: Path) -> list[dict[str, str]]:
    with open(root / "experiments/tuning/leaderboard.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _trial_runs(root: Path) -> tuple[list, list]:
    """(tuning runs, trial runs) of the project's MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("op-classifier")
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return [r for r in runs if r.data.tags.get("stage") == "tune"], [r for r in runs if "trial_id" in r.data.tags]


def _running_trials(root: Path) -> int:
    """Trial runs RUNNING now, read from the store read-only (an MLflow client here would race the chief
    making the schema); 0 while the store is still being made."""
    import sqlite3

    database = root / "mlflow.db"
    if not database.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
            query = "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid"
            return db.execute(f"{query} WHERE runs.status = 'RUNNING' AND tags.key = 'trial_id'").fetchone()[0]
    except sqlite3.Error:  # tables not made yet, or locked by the processes under test
        return 0


@pytest.mark.slow
def test_a_chief_and_two_workers_finish_six_trials_as_one_tracked_search(project: Path) -> None:
    done = subprocess.run(
        [CLI, "tune", "--workers", "2", *TINY, "tuner.max_trials=6"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_short(done.stdout.splitlines())  # the workers' lines: one a trial, no Keras Tuner banner (issue 37)
    assert len([line for line in done.stdout.splitlines() if line.startswith("trial ")]) == 6, done.stdout
    rows = _leaderboard(project)
    assert len(rows) == 6 and {row["status"] for row in rows} == {"COMPLETED"}
    assert "dropout" in (project / "experiments/tuning/best_hparams.yaml").read_text()
    for worker in ("tuner0", "tuner1"):  # both took trials
        assert list((project / f"experiments/tuning/search/worker-{worker}").glob("trial_*"))
    (parent,), trials = _trial_runs(project)
    assert len(trials) == 6 and {t.info.status for t in trials} == {"FINISHED"}
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and "val_accuracy" in trials[0].data.metrics


def _worker_pid(launcher: int, tuner_id: str) -> int | None:
    """The pid of the launcher's child running as tuner_id (from its environment)."""
    children = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            if f"KERASTUNER_TUNER_ID={tuner_id}".encode() in handle.read().split(b"\0"):
                return int(pid)
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_restarted_under_its_id_and_the_search_ends(project: Path) -> None:
    log = project / "launcher.err"
    with open(log, "w") as err:
        launcher = subprocess.Popen(
            [CLI, "tune", "--workers", "2", *TINY, "tuner.max_trials=4"], cwd=project, env=_env(), stderr=err
        )
    try:
        deadline = time.monotonic() + 300
        # Both workers inside a trial: each runs one at a time, so tuner0 is mid-trial when killed.
        while _running_trials(project) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)
        os.kill(_worker_pid(launcher.pid, "tuner0"), signal.SIGKILL)
        assert launcher.wait(timeout=600) == 0, log.read_text()[-2000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "worker tuner0 ended with signal SIGKILL; restarting it under the same id" in log.read_text()
    rows = _leaderboard(project)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"COMPLETED"}
    _, trials = _trial_runs(project)
    assert "RUNNING" not in {t.info.status for t in trials}  # the killed attempt was closed
    assert len([t for t in trials if t.info.status == "FINISHED"]) == 4


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        cli.main(argv)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return ended.value.code, err


def _outside_any_cluster(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    """In the project, with none of Keras Tuner's cluster variables of this process set."""
    monkeypatch.chdir(project)
    for name in KT_ENV:
        monkeypatch.delenv(name, raising=False)


def test_bad_cluster_input_is_one_line_and_writes_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _outside_any_cluster(monkeypatch, project)
    with pytest.raises(SystemExit) as ended:
        cli.main(["tune", "--workers", "0", *TINY])
    assert ended.value.code == 2
    assert "argument --workers: must be a whole number, at least 1, not '0'" in capsys.readouterr().err
    code, err = _one_line_error(capsys, ["tune", "--workers", "2", *TINY, "tuner=none"])
    assert code == 2 and "there is no search to distribute" in err

    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    code, err = _one_line_error(capsys, ["tune", *TINY])
    assert code == 2 and "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT not set" in err

    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))  # nothing listens: no chief
    monkeypatch.setenv("OP_CLASSIFIER_CHIEF_TIMEOUT", "2")
    code, err = _one_line_error(capsys, ["tune", *TINY])
    assert code == 1 and "no Keras Tuner chief answers at 127.0.0.1:" in err

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(taken.getsockname()[1]))
        code, err = _one_line_error(capsys, ["tune", *TINY])
    assert code == 1 and "cannot be used" in err and "pick another" in err

    code, err = _one_line_error(capsys, ["tune", "--workers", "2", *TINY])
    assert code == 2 and "--workers starts its own cluster: unset KERASTUNER_TUNER_ID" in err
    assert not (project / "experiments").exists()  # nothing half-written


def test_data_prepared_at_another_size_is_one_line_before_any_process_starts(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Prepared at 32 px, searched at 48: every worker died in Keras and was restarted 4 times (issue 25)."""
    _outside_any_cluster(monkeypatch, project)
    for command in (["tune", "--workers", "2"], ["tune"], ["train"]):
        code, err = _one_line_error(capsys, [*command, *TINY, "data.image_size=48"])
        assert code == 1 and "holds 32-pixel images, this config's data.image_size is 48: prepare them again" in err
    assert not (project / "experiments").exists() and not (project / "mlflow.db").exists()  # nothing started
