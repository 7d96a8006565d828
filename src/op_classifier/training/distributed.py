"""Multi-process data-parallel training: JAX's distributed runtime under keras.distribution.DataParallel.

Every process holds a full replica of the model and feeds its share of each global batch; XLA sums the
gradients across processes (gloo over TCP on CPUs), so every replica takes the same step. Process 0,
the chief, alone writes files and talks to MLflow. Why this engine and its limits: docs/models.md, "Multi-process
training", and docs/decisions.md.

A process joins a run from Keras's own variables: KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator,
host:port, where process 0 listens), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID.
`launch` starts N such processes on 127.0.0.1 and watches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np

from op_classifier.data.prepared import load_labels
from op_classifier.data.stream import ImageStream, split_stream
from op_classifier.errors import ConfigError, OpClassifierError
from op_classifier.net import free_port, port_problem

ADDRESS_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
COUNT_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
RANK_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
TIMEOUT_ENV = "OP_CLASSIFIER_JOIN_TIMEOUT"  # seconds to reach the coordinator and for all to register
JOIN_TIMEOUT_S = 120
HEARTBEAT_S = 30  # a peer silent this long is dead: JAX then ends every other process (non-zero)
SHUTDOWN_S = 1800  # how long the others wait at exit while the chief exports and logs the model
STOP_GRACE_S = 10  # after SIGTERM, before SIGKILL


class DistributedError(OpClassifierError):
    """A multi-process run cannot start or did not finish."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in a run: the coordinator's host:port, how many processes, which one."""

    coordinator: str = ""
    processes: int = 1
    rank: int = 0

    @property
    def chief(self) -> bool:
        """Process 0: the one that writes files and logs to MLflow."""
        return self.rank == 0


SINGLE = Cluster()


def from_env(env: Mapping[str, str]) -> Cluster | None:
    """The run the environment names, None when it names none; DistributedError when half-named or bad."""
    names = (ADDRESS_ENV, COUNT_ENV, RANK_ENV)
    given = {name: env[name] for name in names if env.get(name, "").strip()}
    if not given:
        return None
    missing = [name for name in names if name not in given]
    if missing:
        raise DistributedError(f"{', '.join(missing)} not set: a multi-process run needs all of {', '.join(names)}")
    # Keras accepts a comma-separated list of every job's address; the first is the coordinator.
    coordinator = given[ADDRESS_ENV].split(",")[0].strip()
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"{ADDRESS_ENV}={given[ADDRESS_ENV]}: the coordinator must be host:port")
    count, rank = _integer(COUNT_ENV, given[COUNT_ENV]), _integer(RANK_ENV, given[RANK_ENV])
    if count < 1 or not 0 <= rank < count:
        raise DistributedError(f"{RANK_ENV}={rank} with {COUNT_ENV}={count}: the id must be 0 to {count - 1}")
    return Cluster(coordinator, count, rank)


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text}: not a whole number") from None


def join(batch_size: int) -> Cluster:
    """Join the run the environment names (before any JAX computation); SINGLE when it names none."""
    cluster = from_env(os.environ)
    if cluster is None or cluster.processes == 1:
        return SINGLE
    if keras.backend.backend() != "jax":
        raise DistributedError(
            f"multi-process training runs on JAX: set KERAS_BACKEND=jax (not {keras.backend.backend()})"
        )
    check_batch(batch_size, cluster.processes)
    timeout = join_timeout()
    # JAX aborts the whole process (a C++ fatal error, no exception) on a taken port or an unreachable
    # coordinator, so both are checked here first, to fail with one line.
    if cluster.chief:
        _check_port_free(cluster.coordinator)
    else:
        _wait_for_coordinator(cluster.coordinator, timeout)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10; explicit
    # jax.distributed directly, not keras.distribution.initialize: only it takes the timeouts.
    jax.distributed.initialize(
        cluster.coordinator,
        cluster.processes,
        cluster.rank,
        initialization_timeout=timeout,
        heartbeat_timeout_seconds=HEARTBEAT_S,
        shutdown_timeout_seconds=SHUTDOWN_S,
    )
    # Our streams read each process's own share: Keras must not shard them again.
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    )
    return cluster


@contextlib.contextmanager
def fail_fast(cluster: Cluster) -> Iterator[None]:
    """In a multi-process run, an error ends this process at once, its one line printed.

    A normal exit waits at JAX's exit barrier for every process, while the others wait for this one in
    their next collective step: a deadlock. Ended at once, its heartbeats stop and JAX ends the others.
    """
    if cluster.processes == 1:
        yield
        return
    try:
        yield
    except OpClassifierError as error:
        _exit(f"error: {error}", error.exit_code)
    except KeyboardInterrupt:
        _exit("interrupted", 130)
    except BaseException:
        traceback.print_exc()
        _exit(f"error: training process {cluster.rank} failed", 1)


def _exit(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def check_batch(batch_size: int, processes: int) -> None:
    """train.batch_size is the global batch: it must split evenly across the processes."""
    if batch_size % processes:
        raise ConfigError(f"train.batch_size={batch_size} does not split across {processes} processes evenly")


def join_timeout() -> int:
    """Seconds to reach the coordinator and for every process to register: $OP_CLASSIFIER_JOIN_TIMEOUT or 120."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return JOIN_TIMEOUT_S
    if not text.isdigit() or int(text) < 1:
        raise DistributedError(f"{TIMEOUT_ENV}={text}: a whole number of seconds, at least 1")
    return int(text)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_port_free(address: str) -> None:
    port = _split(address)[1]
    # JAX's coordinator listens on every interface ([::]:port), so that is what must be free.
    reason = port_problem("", port)
    if reason:
        raise DistributedError(f"coordinator port {port} is {reason}: pick another in {ADDRESS_ENV}")


def _wait_for_coordinator(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(_split(address), timeout=min(2.0, timeout)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"coordinator {address} unreachable after {timeout} s ({error.strerror or error}): "
                    f"start process 0 first, or fix {ADDRESS_ENV} ({TIMEOUT_ENV} sets the wait)"
                ) from None
        time.sleep(0.5)


def steps_per_epoch(rows: int, batch_size: int, processes: int) -> int:
    """Global batches an epoch: a last partial batch counts when every process gets a row of it."""
    full, left = divmod(rows, batch_size)
    return full + (1 if left >= processes else 0)


class ShardStream(ImageStream):
    """One process's contiguous share of every global batch of the seeded epoch order.

    All processes draw the same order (seed, epoch), so together they feed exactly the global batch a
    single process would, in its row order. A last partial batch is cut to a multiple of the process
    count (under `processes` rows an epoch left out; the shuffle leaves out others each epoch).
    """

    def __init__(self, images: Path, labels: np.ndarray, batch_size: int, seed: int, cluster: Cluster) -> None:
        super().__init__(images, labels, batch_size, seed=seed)
        self.cluster = cluster

    def __len__(self) -> int:
        return steps_per_epoch(len(self.rows), self.batch_size, self.cluster.processes)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        batch = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        share = len(batch) // self.cluster.processes
        # The sorted global batch cut in rank order: the processes' shares side by side are the batch one
        # process reads, row for row (augmentation draws, by position, then fall on the same images).
        rows = batch[self.cluster.rank * share : (self.cluster.rank + 1) * share]
        return self.rows.read(rows), self.labels[rows]


def train_stream(prepared: Path, batch_size: int, seed: int, cluster: Cluster) -> ImageStream:
    """The train split's stream: this process's share of each global batch of batch_size."""
    if cluster.processes == 1:
        return split_stream(prepared, "train", batch_size, seed=seed)
    return ShardStream(prepared / "train" / "images.npy", load_labels(prepared, "train"), batch_size, seed, cluster)


class SameStart(keras.callbacks.Callback):
    """After the checkpoint restore, every process must hold the same weights and start epoch.

    Each process restores paths.checkpoints itself (Keras variables change on all processes together),
    so that folder must be the same for all: a process that found another backup stops the run here.
    """

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        from jax.experimental import multihost_utils

        mine = np.frombuffer(bytes.fromhex(weights_digest(self.model)), dtype=np.uint32)
        mine = np.append(mine, np.uint32(self.model._initial_epoch or 0))
        every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size)
        if not (every == every[0]).all():
            raise DistributedError(
                "the processes start from different weights or epochs: paths.checkpoints must be one folder "
                "that every process reads (a shared file system across hosts)"
            )


def check_callbacks(cluster: Cluster) -> list[keras.callbacks.Callback]:
    """SameStart in a multi-process run (after the checkpoint restore), else nothing."""
    return [SameStart()] if cluster.processes > 1 else []


@contextlib.contextmanager
def unsharded() -> Iterator[None]:
    """Keras variables made inside (a saver's throwaway optimizer) belong to this process alone.

    Under DataParallel every new variable is a collective step all processes must take together, so a
    file written by the chief alone would otherwise wait on (or mismatch with) the others.
    """
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def agree(cluster: Cluster, value: int) -> int:
    """The chief's value of an integer every process needs (e.g. a resume point only the chief can read)."""
    if cluster.processes == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every weight's bytes: equal on every process when the replicas agree."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def local_copy(model: keras.Model, cluster: Cluster) -> keras.Model:
    """A model of this process alone with the trained weights, to save and log (predict needs no peer).

    The trained model's variables span every process, so even the chief's predict() would wait for the
    others; the copy is built after the distribution is switched off.
    """
    if cluster.processes == 1:
        return model
    weights = model.get_weights()
    keras.distribution.set_distribution(None)
    copy = keras.models.clone_model(model)
    copy.set_weights(weights)
    copy.compile_from_config(model.get_compile_config())
    return copy


def launch(argv: Sequence[str], processes: int, verbose: bool = False) -> None:
    """Run `python -m op_classifier.cli train ...` as `processes` processes on 127.0.0.1; fail if any fails.

    Process 0's output is shown as it comes; the others' is kept and their error line reported. A failed
    process stops the rest. At the end the replicas' weight digests are compared.
    """
    if from_env(os.environ) is not None:
        raise DistributedError(f"--processes starts its own run: unset {ADDRESS_ENV}, {COUNT_ENV} and {RANK_ENV}")
    port = free_port()
    # SIGTERM (a kill, DVC stopping) as Ctrl-C: the children are stopped before this process ends.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="op-classifier-train-") as folder:
        logs = [Path(folder) / f"process-{rank}.log" for rank in range(processes)]
        children: list[subprocess.Popen] = []
        try:
            for rank in range(processes):
                children.append(_start(argv, Cluster(f"127.0.0.1:{port}", processes, rank), logs[rank], verbose))
            shown = _show(children[0])
            _watch(children, logs)
            shown.join()
        finally:
            for child in children:
                stop(child)
            signal.signal(signal.SIGTERM, previous)
        _replay_notes(logs[0])
        _compare_digests([shown.text, *(log.read_text(encoding="utf-8", errors="replace") for log in logs[1:])])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start(argv: Sequence[str], cluster: Cluster, log: Path, verbose: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONUNBUFFERED": "1",  # the chief's epoch lines as they come
        ADDRESS_ENV: cluster.coordinator,
        COUNT_ENV: str(cluster.processes),
        RANK_ENV: str(cluster.rank),
    }
    handle = log.open("w", encoding="utf-8")
    with handle:
        # With --verbose every process's stderr is shown (JAX's own logs on a crash); else kept for its error line.
        stderr = None if verbose else handle
        stdout = subprocess.PIPE if cluster.chief else handle
        return subprocess.Popen([sys.executable, *argv], env=env, stdout=stdout, stderr=stderr, text=True)


class _Shown(threading.Thread):
    """Copies the chief's stdout to ours line by line, keeping it (its summary holds the digest)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream, self.text = stream, ""

    def run(self) -> None:
        for line in self.stream:
            self.text += line
            sys.stdout.write(line)
            sys.stdout.flush()


def _show(child: subprocess.Popen) -> _Shown:
    shown = _Shown(child.stdout)
    shown.start()
    return shown


def _watch(children: Sequence[subprocess.Popen], logs: Sequence[Path]) -> None:
    """Until all end: the first failure stops the others and is reported (JAX's heartbeats end a hang)."""
    while True:
        codes = [child.poll() for child in children]
        failed = next((rank for rank, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None:
            for child in children:
                stop(child)
            why = _error_line(logs[failed]) or f"exit code {codes[failed]}"
            raise DistributedError(f"training process {failed} of {len(children)} failed: {why}")
        if all(code == 0 for code in codes):
            return
        time.sleep(0.2)


def stop(child: subprocess.Popen) -> None:
    """End one child by its pid: SIGTERM, then SIGKILL after a grace period."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _error_line(log: Path) -> str | None:
    """A failed process's own one-line error, else JAX's fatal line, else None."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    ours = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    fatal = [line.split("] ", 1)[-1] for line in lines if line.startswith("F") and "] " in line]
    raised = [line for line in lines if line[:1].isalpha() and "Error: " in line]  # an uncaught exception
    return ((ours or fatal or raised or [""])[-1])[:300] or None


def _replay_notes(log: Path) -> None:
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("note: "):
            print(line, file=sys.stderr)


def _compare_digests(outputs: Sequence[str]) -> None:
    digests = [_summary(text).get("weights_sha256") for text in outputs]
    if None in digests or len(set(digests)) != 1:
        raise DistributedError(f"the processes ended with different weights: {digests}")
    print(f"note: {len(digests)} processes ended with identical weights (sha256 {digests[0][:16]})", file=sys.stderr)


def _summary(output: str) -> dict[str, Any]:
    """The JSON summary a stage prints last (indented, from a line holding only '{')."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line == "{"]
    if not starts:
        return {}
    try:
        return json.loads("\n".join(lines[starts[-1] :]))
    except ValueError:
        return {}
