"""A stage's interrupt (Ctrl-C, or runner.stop_with_parent's SIGUSR2 once its parent is gone) always lands,
and its run, with a tuner trial open inside it, ends KILLED (issue 35, case 10: the stages of a killed repeat)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SWALLOWED = {  # where Python can only print an exception: the interrupt used to be lost there
    "__del__": "class Freed:\n    def __del__(self):\n        interrupt()\nFreed()\n",
    "gc callback": "gc.callbacks.append(lambda phase, info: phase == 'start' and interrupt())\ngc.collect()\n",
}


@pytest.mark.parametrize("where", SWALLOWED)
def test_a_stage_interrupted_inside_a_finalizer_is_still_interrupted(where: str) -> None:
    """Before: the interrupt runner.stop_with_parent raises (SIGUSR2) landed now and then in a TensorFlow
    __del__ or JAX's gc callback, was printed ("Exception ignored in") and lost: the stage ran on."""
    probe = (
        "import gc, os, signal, time\n"
        "from op_classifier.runner import stop_with_parent\n"
        "stop_with_parent()\n"
        "def interrupt():\n"
        "    os.kill(os.getpid(), signal.SIGUSR2)\n"
        f"{SWALLOWED[where]}"
        "try:\n"
        "    time.sleep(10)\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr


def test_an_interrupted_stage_ends_its_run_killed_and_its_open_trial_too(tmp_path: Path) -> None:
    """Case 10, the stages' runs: tune's trial run is open (entered on the tuner's trial begin) when the
    interrupt comes. Before, the stage's handler ended the trial instead of the stage's run, which the
    trial's abandoned context then ended FAILED ("failed") when it was freed."""
    import contextlib
    import gc

    import mlflow

    from op_classifier.tracking.runs import MlflowTracker
    from tests.conftest import compose

    tracker = MlflowTracker(compose(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}").tracking)
    trial = contextlib.ExitStack()
    with pytest.raises(KeyboardInterrupt), tracker.run("tune", params={"seed": 1}):
        trial.enter_context(tracker.trial("00", {"units": 8}))  # as stages/tune.py's on_trial_begin does
        raise KeyboardInterrupt
    del trial
    gc.collect()
    runs = mlflow.MlflowClient().search_runs([tracker.experiment_id])
    assert {run.info.run_name: run.info.status for run in runs} == {"tune": "KILLED", "trial-00": "KILLED"}
    assert all(run.data.tags["op_classifier.closed"].startswith("interrupted") for run in runs)
