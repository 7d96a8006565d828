"""Multi-process data-parallel training (distributed.py): joining, sharding, bad input, and 2 processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from op_classifier.data import sample
from op_classifier.data.stream import split_stream
from op_classifier.stages import prepare
from op_classifier.training import distributed, hparams
from op_classifier.training.distributed import ADDRESS_ENV, COUNT_ENV, RANK_ENV, TIMEOUT_ENV, Cluster, DistributedError
from tests.conftest import REPO, free_port

pytest.importorskip("jax")  # the engine: JAX's distributed runtime

JOIN_ENV = (ADDRESS_ENV, COUNT_ENV, RANK_ENV, TIMEOUT_ENV)


def test_no_variables_mean_one_process() -> None:
    assert distributed.from_env({}) is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({COUNT_ENV: "2"}, f"{ADDRESS_ENV}, {RANK_ENV} not set"),
        ({ADDRESS_ENV: "127.0.0.1:1234", COUNT_ENV: "2"}, f"{RANK_ENV} not set"),
        ({ADDRESS_ENV: "127.0.0.1", COUNT_ENV: "2", RANK_ENV: "0"}, "must be host:port"),
        ({ADDRESS_ENV: "h:1", COUNT_ENV: "two", RANK_ENV: "0"}, "not a whole number"),
        ({ADDRESS_ENV: "h:1", COUNT_ENV: "2", RANK_ENV: "2"}, "must be 0 to 1"),
    ],
)
def test_partial_or_bad_variables_are_one_clear_error(env: dict, says: str) -> None:
    with pytest.raises(DistributedError, match=says):
        distributed.from_env(env)


def test_keras_list_of_addresses_names_the_coordinator_first() -> None:
    env = {ADDRESS_ENV: "10.0.0.1:1234,10.0.0.2:2345", COUNT_ENV: "2", RANK_ENV: "1"}
    assert distributed.from_env(env) == Cluster("10.0.0.1:1234", 2, 1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sample, prepared at 32 px, in a project folder with conf/ (made once per module)."""
    root = tmp_path_factory.mktemp("project")
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(root / "conf")], check=True)
    sample.generate(root / "data/raw", per_class=8, scenes=4)
    from tests.conftest import compose

    prepare.run(
        compose("experiment=tiny", f"paths.raw={root / 'data/raw'}", f"paths.prepared={root / 'data/prepared'}")
    )
    return root


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_the_shards_together_are_the_single_process_batches(prepared: Path, processes: int) -> None:
    """Each global batch is the one a single process reads, cut to a multiple of the process count."""
    folder, batch = prepared / "data/prepared", 12
    single = split_stream(folder, "train", batch, seed=7)
    shards = [distributed.train_stream(folder, batch, 7, Cluster("h:1", processes, rank)) for rank in range(processes)]
    for _ in range(2):  # two epochs: each draws its own order, the same on every process
        steps = distributed.steps_per_epoch(len(single.rows), batch, processes)
        assert [len(shard) for shard in shards] == [steps] * processes
        for index in range(steps):
            whole = single[index][0]
            parts = [shard[index][0] for shard in shards]
            assert len({len(part) for part in parts}) == 1  # every process feeds as many rows
            rows = [image.tobytes() for part in parts for image in part]
            assert len(rows) == len(set(rows)) == len(whole) - len(whole) % processes
            assert rows == [image.tobytes() for image in single[index][0]][: len(rows)]  # in its row order
        for stream in (single, *shards):
            stream.on_epoch_end()


def _cli(tmp: Path, *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """`op-classifier ARGS` in tmp with conf/, every path under tmp, the variables of `env` only."""
    base = {key: value for key, value in os.environ.items() if key not in JOIN_ENV}
    base |= {"PYTHONPATH": str(REPO / "src"), "KERAS_BACKEND": "jax", **env}
    return subprocess.run(
        [sys.executable, "-m", "op_classifier.cli", *args],
        cwd=tmp,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _bad_input_fails_in_one_line(tmp_path: Path, env: dict[str, str], says: str, *extra: str) -> float:
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(tmp_path / "conf")], check=True)
    started = time.monotonic()
    done = _cli(tmp_path, "train", *extra, "experiment=tiny", "tracking=none", env=env)
    seconds = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["conf"]  # nothing written, not even a folder
    return seconds


def test_a_missing_variable_is_one_line(tmp_path: Path) -> None:
    _bad_input_fails_in_one_line(tmp_path, {COUNT_ENV: "2", RANK_ENV: "1"}, f"{ADDRESS_ENV} not set")


@pytest.mark.slow
def test_an_unreachable_coordinator_fails_within_the_timeout(tmp_path: Path) -> None:
    env = {ADDRESS_ENV: f"127.0.0.1:{free_port()}", COUNT_ENV: "2", RANK_ENV: "1", TIMEOUT_ENV: "3"}
    seconds = _bad_input_fails_in_one_line(tmp_path, env, "unreachable after 3 s")
    assert seconds < 60  # the start-up (Keras, JAX) plus the 3 s wait, not JAX's default minutes


@pytest.mark.slow
def test_a_taken_coordinator_port_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {ADDRESS_ENV: f"127.0.0.1:{port}", COUNT_ENV: "2", RANK_ENV: "0"}
        _bad_input_fails_in_one_line(tmp_path, env, f"port {port} is taken")


def test_a_batch_that_does_not_split_is_refused_before_launching(tmp_path: Path) -> None:
    _bad_input_fails_in_one_line(tmp_path, {}, "does not split across 3 processes", "--processes", "3")


@pytest.mark.slow
def test_processes_with_the_join_variables_set_is_refused(tmp_path: Path) -> None:
    env = {ADDRESS_ENV: "127.0.0.1:1", COUNT_ENV: "2", RANK_ENV: "0"}
    _bad_input_fails_in_one_line(tmp_path, env, "--processes starts its own run", "--processes", "2")


@pytest.mark.slow
def test_a_failing_process_stops_the_launch_in_one_line(tmp_path: Path) -> None:
    """Both processes join, then find no prepared data: the launch reports one process's error line."""
    _bad_input_fails_in_one_line(tmp_path, {}, "training process", "--processes", "2", "paths.prepared=missing")


def test_replicas_that_differ_are_an_error() -> None:
    outputs = ['{\n  "weights_sha256": "a"\n}', 'Epoch 1/1\n{\n  "weights_sha256": "b"\n}']
    with pytest.raises(DistributedError, match="different weights"):
        distributed._compare_digests(outputs)


def _launch_args(prepared: Path, tmp_path: Path, *extra: str) -> list[str]:
    hparams.write_best(tmp_path / "best.yaml", {}, None, None)  # tuner=none's record
    return [
        "train",
        "--processes",
        "2",
        "experiment=tiny",
        "tuner=none",
        f"paths.prepared={prepared / 'data/prepared'}",
        f"paths.raw={prepared / 'data/raw'}",
        f"paths.best_hparams={tmp_path / 'best.yaml'}",
        f"paths.checkpoints={tmp_path / 'ckpt'}",
        f"paths.model={tmp_path / 'model'}",
        f"paths.history={tmp_path / 'history.csv'}",
        *extra,
    ]


def _launcher(prepared: Path, args: list[str]) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in JOIN_ENV}
    env |= {"PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "op_classifier.cli", *args],
        cwd=prepared,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(launcher: subprocess.Popen, timeout: float = 900) -> tuple[str, str]:
    """Its output once it ended; a launcher still running then is stopped by its pid (it stops its children)."""
    try:
        return launcher.communicate(timeout=timeout)
    finally:
        if launcher.poll() is None:
            os.kill(launcher.pid, signal.SIGTERM)
            launcher.communicate(timeout=60)


def _summary(out: str) -> dict:
    return json.loads(out[out.rindex("\n{\n") :])


@pytest.mark.slow
def test_two_processes_train_identical_replicas_and_only_the_chief_logs(prepared: Path, tmp_path: Path) -> None:
    """`train --processes 2` on loopback: equal weights on both, one MLflow run, the model written once."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, err = _finish(_launcher(prepared, _launch_args(prepared, tmp_path, "train.epochs=2", f"tracking.uri={store}")))
    assert "error" not in err, err[-3000:]
    summary = _summary(out)
    assert summary["device"].startswith("2 processes")
    assert f"2 processes ended with identical weights (sha256 {summary['weights_sha256'][:16]})" in err
    assert (tmp_path / "model" / "model.keras").is_file()
    import mlflow

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [summary["run_id"]]  # process 1 logged nothing
    assert runs[0].data.params["processes"] == "2"
    assert "epoch_val_accuracy" in runs[0].data.metrics  # the chief logged its epochs


@pytest.mark.slow
def test_a_killed_two_process_training_resumes_on_both(prepared: Path, tmp_path: Path) -> None:
    """Stopped after 2 epochs, run again: both processes restore the chief's checkpoint and go on."""
    # Enough epochs (of about a second) that the stop lands in training, not after it.
    args = _launch_args(prepared, tmp_path, "train.epochs=30", "train.patience=100", "tracking=none")
    history = tmp_path / "history.csv"
    first = _launcher(prepared, args)
    deadline = time.monotonic() + 600
    while not (history.is_file() and len(history.read_text().splitlines()) >= 3):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    out, err = _finish(_launcher(prepared, args))
    summary = _summary(out)
    assert summary["resumed"] and summary["epochs_run"] == 30, (summary, err[-3000:])
    assert "identical weights" in err
    epochs = [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]
    assert epochs == list(range(30))
