"""Keras Tuner's own distributed search: a chief runs the oracle over gRPC, workers run the trials.

Keras Tuner reads three variables: KERASTUNER_TUNER_ID ("chief", or a worker's id such as "tuner0"),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (where the chief listens). `op-classifier tune
--workers N` sets them for a chief and N workers on this machine and restarts a worker that dies;
across hosts, set them yourself and run the same tune stage on each (docs/search.md: "Distributed search").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from op_classifier.errors import ConfigError, OpClassifierError
from op_classifier.net import free_port, port_problem

ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
CHIEF = "chief"
WAIT_ENV = "OP_CLASSIFIER_CHIEF_TIMEOUT"  # seconds a worker waits for its chief (and the chief's run)
WAIT_S = 300.0
RESTARTS = 3  # per worker, by the local launcher: a worker killed more often than this stops the search
POLL_S = 0.5


@dataclass(frozen=True)
class Role:
    """This process's part in a distributed search."""

    tuner_id: str
    ip: str
    port: int

    @property
    def chief(self) -> bool:
        """Keras Tuner's own test: the chief's id contains "chief"."""
        return CHIEF in self.tuner_id

    @property
    def address(self) -> str:
        """host:port of the chief's oracle."""
        return f"{self.ip}:{self.port}"


def role() -> Role | None:
    """The part Keras Tuner's variables give this process; None when none is set."""
    given = {name: os.environ.get(name, "") for name in ENV}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set: a distributed search needs all of {', '.join(ENV)}")
    port = given["KERASTUNER_ORACLE_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"KERASTUNER_ORACLE_PORT={port}: not a port number")
    return Role(given["KERASTUNER_TUNER_ID"], given["KERASTUNER_ORACLE_IP"], int(port))


def wait_s() -> float:
    """How long a worker waits for its chief: OP_CLASSIFIER_CHIEF_TIMEOUT seconds, else 300."""
    text = os.environ.get(WAIT_ENV, "")
    try:
        return float(text) if text else WAIT_S
    except ValueError:
        raise ConfigError(f"{WAIT_ENV}={text}: not a number of seconds") from None


def check_port_free(chief: Role) -> None:
    """Refuse a taken port before the search starts (gRPC would share it, or fail in a traceback)."""
    reason = port_problem(chief.ip, chief.port)
    if reason is not None:
        raise OpClassifierError(
            f"KERASTUNER_ORACLE_PORT {chief.port} on {chief.ip} cannot be used ({reason}): pick another"
        )


def wait_for_chief(worker: Role, timeout: float) -> None:
    """Return once the chief's oracle answers at its address; one line after timeout seconds otherwise."""
    import grpc

    channel = grpc.insecure_channel(worker.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise OpClassifierError(
            f"no Keras Tuner chief answers at {worker.address} after {timeout:g} s "
            f"(KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT; is it running? {WAIT_ENV} sets the wait)"
        ) from None
    finally:
        channel.close()


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (CUDA_VISIBLE_DEVICES, else nvidia-smi's list); none without CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(found.stdout.splitlines()) if line.startswith("GPU ")]


def launch(workers: int, overrides: Sequence[str]) -> dict:
    """A chief and `workers` workers of `op-classifier tune overrides` on 127.0.0.1, until the search ends."""
    if role() is not None:
        raise ConfigError(f"--workers starts its own cluster: unset {', '.join(ENV)} first")
    cluster = _Cluster(free_port(), list(overrides), visible_gpus())
    started = time.perf_counter()
    try:
        restarts = cluster.run([f"tuner{i}" for i in range(workers)])
    finally:
        cluster.stop()
    return {"workers": workers, "restarts": dict(restarts), "seconds": round(time.perf_counter() - started, 1)}


class _Cluster:
    """The local processes of one search: the chief and its workers, each stopped by its own pid."""

    def __init__(self, port: int, overrides: list[str], gpus: list[str]) -> None:
        self.port = port
        self.overrides = overrides
        self.gpus = gpus
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, tuner_id: str, index: int) -> None:
        """Start one process of the cluster under tuner_id."""
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1"}
        env["KERASTUNER_ORACLE_PORT"] = str(self.port)
        if self.gpus:  # one GPU each; the chief only answers the workers
            env["CUDA_VISIBLE_DEVICES"] = "" if tuner_id == CHIEF else self.gpus[index % len(self.gpus)]
        command = [sys.executable, "-m", "op_classifier.cli", "tune", *self.overrides]
        self.procs[tuner_id] = subprocess.Popen(command, env=env)

    def run(self, worker_ids: list[str]) -> Counter:
        """Start everything, restart a worker that dies, return once the chief and every worker ended well."""
        self.start(CHIEF, 0)
        for index, tuner_id in enumerate(worker_ids):
            self.start(tuner_id, index)
        restarts: Counter = Counter()
        while (chief := self.procs[CHIEF].poll()) is None or any(self.procs[w].poll() is None for w in worker_ids):
            if chief is not None and chief != 0:
                raise OpClassifierError(f"the Keras Tuner chief ended with {_ended(chief)}; its workers were stopped")
            for index, tuner_id in enumerate(worker_ids):
                code = self.procs[tuner_id].poll()
                if code in (None, 0) or chief is not None:
                    continue
                if restarts[tuner_id] == RESTARTS:
                    raise OpClassifierError(
                        f"worker {tuner_id} ended with {_ended(code)} {RESTARTS + 1} times: stopped"
                    )
                restarts[tuner_id] += 1
                print(
                    f"note: worker {tuner_id} ended with {_ended(code)}; restarting it under the same id "
                    "(the chief gives it its unfinished trial again)",
                    file=sys.stderr,
                    flush=True,
                )
                self.start(tuner_id, index)
            time.sleep(POLL_S)
        failed = {w: code for w in worker_ids if (code := self.procs[w].returncode) != 0}
        if chief != 0 or failed:
            raise OpClassifierError(f"the search ended, but not every process did: {failed or {CHIEF: chief}}")
        return restarts

    def stop(self) -> None:
        """Terminate what still runs (SIGTERM, then SIGKILL after 10 s), by each process's own pid."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in alive:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ended(code: int) -> str:
    """An exit status in words: `exit code 2` or `signal SIGKILL`."""
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
