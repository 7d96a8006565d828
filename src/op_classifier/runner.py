"""How every entry point runs: user-facing errors as one line and an exit code; stages from params.yaml.

The stages import this, not the CLI, so a stage's code is only what it really uses (dvc.yaml's deps).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from op_classifier import config
from op_classifier.errors import OpClassifierError


def guarded(action: Callable[[], object]) -> int:
    """Run an action; turn a user-facing error into one line on stderr and its exit code."""
    try:
        action()
    except OpClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: cannot write {error.filename or 'a file'}: {error.strerror}; free some space", file=sys.stderr)
        return 1
    return 0


PARENT_POLL_SECONDS = 1.0


def stage_main(run: Callable[[config.Config], dict]) -> None:
    """Entry point of a DVC stage: run it with the validated params.yaml, for as long as its parent lives.

    The console gets one human line (stage_line); the summary itself is in the stage's outputs and runs.
    """
    stop_with_parent()
    module = sys.modules[run.__module__]  # under `python -m`, __main__: its spec still names the stage
    stage = (module.__spec__.name if module.__spec__ else run.__module__).rsplit(".", 1)[-1]
    sys.exit(guarded(lambda: print(stage_line(stage, run(config.load_params())), flush=True)))


LINE = 120  # the most characters of a console line


def written(*paths: object) -> str:
    """Files for a stage's line: `a.json, b.csv in folder/` when they share a folder, else each path."""
    parts = [Path(str(path)) for path in paths]
    folders = {part.parent for part in parts}
    if len(parts) > 1 and len(folders) == 1:
        return f"{', '.join(part.name for part in parts)} in {folders.pop()}/"
    return ", ".join(map(str, parts))


def _names_only(wrote: str) -> str:
    """`a/b.json, c/d.csv` as `b.json, d.csv`; `b.json, e/f in a/` (already within their folder) as `b.json, e/f`."""
    if wrote.endswith("/") and " in " in wrote:
        return wrote.rsplit(" in ", 1)[0]
    return ", ".join(Path(item).name + ("/" if item.endswith("/") else "") for item in wrote.split(", "))


WHERE_MIN = 40  # characters of the line's `; wrote ...` kept when the line is too long


def stage_line(stage: str, summary: dict) -> str:
    """A stage's summary in one line of at most LINE characters: `<stage>: <did>; wrote <wrote> (<s> s)`.

    A stage says what it did in the summary's "did" and where it wrote in "wrote"; without "did", its
    summary's plain values (numbers, words) stand in for it.
    """
    did = summary.get("did")
    if did is None:
        plain = {k: v for k, v in summary.items() if k not in ("seconds", "wrote") and _plain(v)}
        did = ", ".join(f"{k} {v}" for k, v in plain.items()) or "done"
    head = f"{stage}: {did}"
    where = f"; wrote {summary['wrote']}" if summary.get("wrote") else ""
    room = LINE - len(f" ({summary['seconds']:g} s)" if "seconds" in summary else "")
    if len(head) + len(where) > room and where:  # where gives way first: its file names without folders
        where = f"; wrote {_names_only(str(summary['wrote']))}"
    if len(head) + len(where) > room and len(where) > WHERE_MIN:  # then its start, keeping its file names
        cut = max(WHERE_MIN, room - len(head))
        where = "; wrote ..." + where[len(where) - (cut - len("; wrote ...")) :]
    if len(head) + len(where) > room:
        head = head[: room - len(where) - 3] + "..."
    return f"{head}{where}" + (f" ({summary['seconds']:g} s)" if "seconds" in summary else "")


def stop_with_parent() -> None:
    """Interrupt this process (as Ctrl-C does) once the process that started it is gone.

    `dvc repro` killed alone (SIGKILL) left its stage training every epoch to the end and logging a
    FINISHED run that nothing evaluated: now the stage stops, its run ends KILLED, its checkpoint stays.
    A signal of its own (SIGUSR2) raises the KeyboardInterrupt: a process started in the background
    inherits SIGINT ignored, and Python then never turns a SIGINT into one.
    """
    parent = os.getppid()
    signal.signal(signal.SIGUSR2, _interrupted)
    sys.unraisablehook = _interrupt_again(sys.unraisablehook)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        print(f"error: the process that started this stage (pid {parent}) is gone: stopping", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=watch, name="op-classifier-parent-watch", daemon=True).start()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_again(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """sys.unraisablehook, but an interrupt raised where Python can only print it is raised again, soon.

    A __del__ or a gc callback (TensorFlow's, JAX's) that the signal lands in swallows the exception
    ("Exception ignored in"): the stage of a killed parent then ran on.
    """

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2)).start()
            return
        previous(unraisable)

    return hook


def _plain(value: object) -> bool:
    """A value a person reads in a line: a number, or a word (not a digest, not a path)."""
    if isinstance(value, str):
        return len(value) <= 24 and "/" not in value
    return isinstance(value, (int, float))


def report(summary: dict) -> None:
    """A command's result, as indented JSON on stdout."""
    print(json.dumps(summary, indent=2, default=str))
