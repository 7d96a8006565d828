"""A team tracking server: `mlflow server` on a PostgreSQL store of the project's own, with proxied artifacts.

`op-classifier tracking-server start|stop|status` (`make tracking-server`, `make tracking-server-stop`).
Everything lives in one folder (default `.mlflow-server/`, git- and DVC-ignored): `pgdata/` (the
database cluster, made by initdb on first use), `artifacts/` (what clients upload through the server),
the two logs, and `server.json` (pids, ports, the backend URI with its password; mode 0600), written
only once both processes answer. Both are stopped by their own ids. MLflow is run as its command,
not imported: this module only starts and stops processes (processes.py: how each is known, waited
for and stopped).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from op_classifier.defaults import HOST, TRACKING_SERVER_PORT, TRACKING_SERVER_WORKERS
from op_classifier.net import free_port, port_problem
from op_classifier.tracking.processes import Process, ServerError, stop_process, wait_until

DEFAULT_DIR = ".mlflow-server"
DB_USER = DB_NAME = "mlflow"
STATE_FILE = "server.json"
# initdb and postgres refuse to run as root; as root we run them as this user (Debian's package makes
# it), else as nobody. Any other user runs them as themselves, as on a laptop.
PG_USERS = ("postgres", "nobody")


@dataclass
class State:
    """What a running server is made of: server.json."""

    uri: str
    host: str
    port: int
    pg_port: int
    backend_uri: str
    artifacts: str
    mlflow: Process
    postgres: Process

    @classmethod
    def load(cls, path: Path) -> State | None:
        """The state recorded in path, or None when there is none."""
        if not path.is_file():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**raw, "mlflow": Process(**raw["mlflow"]), "postgres": Process(**raw["postgres"])})

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only (the backend URI holds the database password)."""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out, indent=2)
        tmp.replace(path)


def start(
    folder: Path,
    host: str = HOST,
    port: int = TRACKING_SERVER_PORT,
    workers: int = TRACKING_SERVER_WORKERS,
    allowed_hosts: str | None = None,
    app_name: str | None = None,
    pg_bin: Path | None = None,
) -> dict[str, object]:
    """Start PostgreSQL (initdb on first use) and `mlflow server` on it; a summary with the tracking URI.

    On any failure, whatever this call started is stopped and a cluster it created is removed.
    """
    folder = folder.resolve()
    state_file = folder / STATE_FILE
    running = _running_state(state_file)
    if running is not None:
        return {"status": "already running", "MLFLOW_TRACKING_URI": running.uri, "export": _export(running.uri)}
    _check_port_free(host, port)
    _check_driver()
    binaries = _pg_binaries(pg_bin)
    folder.mkdir(parents=True, exist_ok=True)
    pgdata, artifacts = folder / "pgdata", folder / "artifacts"
    user = _pg_user()
    undo: list[Callable[[], None]] = []
    try:
        created = not (pgdata / "PG_VERSION").is_file()
        if created:
            undo.append(lambda: shutil.rmtree(pgdata, ignore_errors=True))
            password = _initdb(binaries, pgdata, folder, user)
        else:
            password = (pgdata / ".mlflow-password").read_text(encoding="utf-8").strip()
        pg_port = free_port()
        postgres = _start_postgres(binaries, pgdata, folder, pg_port, user)
        undo.append(lambda: stop_process(postgres, "postgres", signal.SIGINT))  # SIGINT: PostgreSQL's fast shutdown
        if created:
            _createdb(binaries, pg_port, password)
        backend = f"postgresql+psycopg2://{DB_USER}:{password}@127.0.0.1:{pg_port}/{DB_NAME}"
        artifacts.mkdir(exist_ok=True)
        mlflow = _start_mlflow(folder, backend, artifacts, host, port, workers, allowed_hosts, app_name)
        undo.append(lambda: stop_process(mlflow, "mlflow server", signal.SIGTERM, group=True))
        uri = f"http://{_client_host(host)}:{port}"
        wait_until(lambda: _healthy(uri), mlflow, "mlflow server", folder / "mlflow.log")
        state = State(uri, host, port, pg_port, backend, str(artifacts), mlflow, postgres)
        state.save(state_file)
    except BaseException:
        for action in reversed(undo):
            with contextlib.suppress(Exception):  # the first error is the one to report
                action()
        raise
    return {
        "status": "started",
        "MLFLOW_TRACKING_URI": uri,
        "export": _export(uri),
        "backend_store": backend.replace(password, "***"),
        "artifacts": str(artifacts),
        "pids": {"mlflow": mlflow.pid, "postgres": postgres.pid},
        "logs": [str(folder / "mlflow.log"), str(folder / "postgres.log")],
    }


def stop(folder: Path) -> dict[str, object]:
    """Stop the server started from folder (mlflow first, then PostgreSQL), each by its own id."""
    state_file = folder.resolve() / STATE_FILE
    state = State.load(state_file)
    if state is None:
        raise ServerError(f"no tracking server was started from {folder} (no {STATE_FILE})")
    stop_process(state.mlflow, "mlflow server", signal.SIGTERM, group=True)
    stop_process(state.postgres, "postgres", signal.SIGINT)
    state_file.unlink()
    return {"status": "stopped", "pids": {"mlflow": state.mlflow.pid, "postgres": state.postgres.pid}}


def status(folder: Path) -> dict[str, object]:
    """Whether the server started from folder runs and answers; its tracking URI."""
    state_file = folder.resolve() / STATE_FILE
    state = State.load(state_file)
    if state is None:
        raise ServerError(f"no tracking server is running from {folder} (no {STATE_FILE})")
    up = {"mlflow": state.mlflow.alive(), "postgres": state.postgres.alive()}
    if not all(up.values()):
        down = ", ".join(name for name, alive in up.items() if not alive)
        raise ServerError(f"the tracking server from {folder} is not running ({down} gone): `stop`, then `start`")
    if not _healthy(state.uri):
        raise ServerError(f"the tracking server at {state.uri} runs but does not answer /health")
    return {
        "status": "running",
        "MLFLOW_TRACKING_URI": state.uri,
        "export": _export(state.uri),
        "pids": {"mlflow": state.mlflow.pid, "postgres": state.postgres.pid},
    }


def _running_state(state_file: Path) -> State | None:
    """The recorded server if it still runs; a stale record (both gone, e.g. after a reboot) is dropped."""
    state = State.load(state_file)
    if state is None:
        return None
    if state.mlflow.alive() and state.postgres.alive():
        return state
    if state.mlflow.alive() or state.postgres.alive():
        raise ServerError(f"the tracking server from {state_file.parent} is half running: `stop` it first")
    state_file.unlink()
    return None


def _export(uri: str) -> str:
    return f"export MLFLOW_TRACKING_URI={uri}"


def _client_host(host: str) -> str:
    """The address a client on this machine uses: a wildcard bind is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _check_port_free(host: str, port: int) -> None:
    reason = port_problem(host, port)
    if reason is not None:
        raise ServerError(
            f"port {port} on {host} is {reason}: stop what listens there or pick another port "
            "(--port, or make tracking-server PORT=...)"
        )


def _check_driver() -> None:
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:
        raise ServerError(
            "psycopg2 is not installed (MLflow's PostgreSQL driver): `make tracking-server` installs it, "
            "or pip install psycopg2-binary==2.9.13"
        )


def _pg_binaries(pg_bin: Path | None) -> Path:
    """The folder of initdb, postgres and createdb: pg_bin, else PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    tools = ("initdb", "postgres", "createdb", "pg_isready")
    candidates = [pg_bin] if pg_bin else []
    if not pg_bin:
        found = shutil.which("initdb")
        candidates += [Path(found).parent] if found else []
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
        candidates += debian
    for folder in candidates:
        if all((folder / tool).is_file() for tool in tools):
            return folder
    where = str(pg_bin) if pg_bin else "PATH or /usr/lib/postgresql/*/bin"
    raise ServerError(
        f"PostgreSQL's server programs ({', '.join(tools)}) are not in {where}: install them "
        "(Debian: apt-get install postgresql; macOS: brew install postgresql) or name their folder with --pg-bin"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _pg_user() -> str | None:
    """Who runs PostgreSQL: None (this user) unless we are root, who initdb and postgres refuse."""
    if os.geteuid() != 0:
        return None
    for name in PG_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServerError(f"running as root, and none of the users {', '.join(PG_USERS)} exists to run PostgreSQL")


def _as_user(user: str | None) -> dict[str, object]:
    """subprocess arguments that run a child as user (root only), with that user's own groups."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _give(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _initdb(binaries: Path, pgdata: Path, folder: Path, user: str | None) -> str:
    """Make the cluster: superuser `mlflow` with a random password (kept in pgdata, mode 0600), TCP only."""
    password = secrets.token_urlsafe(24)
    pgdata.mkdir(mode=0o700)
    _give(pgdata, user)
    _reachable_by(pgdata, user)
    pwfile = folder / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    _give(pwfile, user)
    try:
        _run(
            [
                str(binaries / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                DB_USER,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",  # the password, for every connection, local ones too
                "--encoding=UTF8",
                "--locale=C",  # no dependence on the machine's locales
            ],
            "initdb",
            user,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    keep = pgdata / ".mlflow-password"
    fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
    return password


def _reachable_by(pgdata: Path, user: str | None) -> None:
    """As root: check that PostgreSQL's user can reach the cluster (a folder under a 0700 one cannot)."""
    if user is None:
        return
    done = subprocess.run(["test", "-w", str(pgdata)], **_as_user(user))
    if done.returncode != 0:
        raise ServerError(
            f"user {user}, who runs PostgreSQL when started as root, cannot reach {pgdata}: "
            "pick a folder every user can traverse (--dir)"
        )


def _run(argv: list[str], what: str, user: str | None, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", **_as_user(user))
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


def _start_postgres(binaries: Path, pgdata: Path, folder: Path, pg_port: int, user: str | None) -> Process:
    """postgres on 127.0.0.1:pg_port, no unix socket (its default folder belongs to the system); once it accepts connections."""
    log = folder / "postgres.log"
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [
                str(binaries / "postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(pg_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,  # outlives this command; stopped later by its pid
            **_as_user(user),
        )
    process = Process.of(child.pid)

    def ready() -> bool:
        check = [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(pg_port)]
        return subprocess.run(check, capture_output=True).returncode == 0

    try:
        wait_until(ready, process, "postgres", log)
    except BaseException:
        stop_process(process, "postgres", signal.SIGINT)
        raise
    return process


def _createdb(binaries: Path, pg_port: int, password: str) -> None:
    env = {**os.environ, "PGPASSWORD": password}
    argv = [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", DB_USER, DB_NAME]
    _run(argv, "createdb", None, env)


def _start_mlflow(
    folder: Path,
    backend: str,
    artifacts: Path,
    host: str,
    port: int,
    workers: int,
    allowed_hosts: str | None,
    app_name: str | None,
) -> Process:
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    argv += ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    argv += ["--app-name", app_name] if app_name else []
    env = {
        **os.environ,
        # Through the environment, not argv: `ps` shows every user a command line, with its password.
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
        # MLflow's GenAI job runner (judges, trace roll-ups) is one more process this pipeline never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store is the backend above, never a client URI
    with open(folder / "mlflow.log", "ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,  # basic-auth keeps its user database (basic_auth.db) in the working directory
            env=env,
            start_new_session=True,  # its own process group: uvicorn's workers are stopped with it
        )
    return Process.of(child.pid)


def _healthy(uri: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            return answer.status == 200
    return False
