"""TensorFlow's start-up lines off by default, back with OP_CLASSIFIER_VERBOSE=1 / --verbose; our lines always."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from op_classifier import quiet
from op_classifier.runner import stage_line, written

SRC = str(Path(__file__).resolve().parents[1] / "src")
NOISE = [  # as TensorFlow 2.21 printed them on a machine without a GPU driver
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795531172.646420   17679 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1795531172.754689   17679 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "E0000 00:00:1795531185.813551   17791 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
OURS = ["error: something of ours", "W0000 00:00:1.0   1 some_kernel.cc:12] a real TensorFlow warning", "Traceback"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in (quiet.VERBOSE_ENV, quiet.SET_MARK, *quiet.QUIET_ENV, *quiet.NOT_A_TERMINAL_ENV)
    }
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})


def test_the_filter_drops_only_known_start_up_lines_of_what_cpp_writes_to_fd_2() -> None:
    lines = [line for pair in zip(NOISE, OURS + OURS) for line in pair]
    code = (
        f"import os, sys\nfrom op_classifier.quiet import filtered_stderr\nlines = {lines!r}\n"
        "with filtered_stderr():\n"
        "    for line in lines: os.write(2, (line + '\\n').encode())\n"  # as C++ writes: straight to fd 2
        "    print('python, inside', file=sys.stderr)\n"
        "print('python, after', file=sys.stderr)\n"
    )
    done = _python(code)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [line for line in lines if line in OURS] + ["python, inside", "python, after"]


def test_quiet_defaults_are_set_and_verbose_takes_them_away_in_children_too() -> None:
    code = (
        "import os, sys\nimport op_classifier\nfrom op_classifier import quiet\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), any(type(f).__name__ == '_QuietTensorFlow' "
        "for f in sys.meta_path))\n"
        "quiet.configure(verbose=True)\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), any(type(f).__name__ == '_QuietTensorFlow' "
        "for f in sys.meta_path), os.environ.get('OP_CLASSIFIER_VERBOSE'))\n"
    )
    assert _python(code).stdout.splitlines() == ["2 True", "None False 1"]
    assert _python(code, TF_CPP_MIN_LOG_LEVEL="0").stdout.splitlines() == ["0 True", "0 False 1"]  # the user's
    # A child of a quiet process inherits TF_CPP_MIN_LOG_LEVEL=2, and its --verbose still takes it away.
    child = _python(code, TF_CPP_MIN_LOG_LEVEL="2", OP_CLASSIFIER_QUIET_SET="TF_CPP_MIN_LOG_LEVEL")
    assert child.stdout.splitlines() == ["2 True", "None False 1"]
    assert _python(code, OP_CLASSIFIER_VERBOSE="1").stdout.splitlines() == ["None False", "None False 1"]


@pytest.mark.slow
def test_a_dvc_stage_says_only_its_own_line_unless_op_classifier_verbose(tmp_path: Path) -> None:
    """`python -m op_classifier.stages.evaluate` imports TensorFlow at its top; here it then stops: no params.yaml."""
    command = [sys.executable, "-m", "op_classifier.stages.evaluate"]
    env = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, quiet.SET_MARK, *quiet.QUIET_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: params.yaml not found: run `op-classifier compose` in the project root"]
    loud = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={**env, quiet.VERBOSE_ENV: "1"})
    assert loud.returncode == 2
    assert "WARNING: All log messages before absl::InitializeLog() is called" in loud.stderr, loud.stderr
    assert loud.stderr.splitlines()[-1].startswith("error: params.yaml not found")


@pytest.mark.slow
def test_the_ui_prints_its_link_and_no_noise(tmp_path: Path) -> None:
    """`op-classifier ui` printed MLflow's and uvicorn's INFO lines and four StarletteDeprecationWarnings
    (issue 26): now its link, and MLflow's one note on which hosts may connect."""
    import shutil
    import signal
    import time

    from tests.conftest import REPO, free_port, wait_until_up

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OP_CLASSIFIER_VERBOSE")}
    cli = str(Path(sys.executable).parent / "op-classifier")
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [cli, "ui", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, said=log.read_text)
        time.sleep(2)  # whatever it prints once up
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    lines = log.read_text().strip().splitlines()
    assert (
        lines[0] == f"runs of sqlite:///{tmp_path.resolve()}/mlflow.db, compared: http://127.0.0.1:{port}/#/experiments"
    )
    assert [line for line in lines[1:] if not line.startswith("[MLflow] Security middleware")] == [], lines


@pytest.mark.slow
def test_a_whole_model_search_says_one_line_a_trial_and_short_epoch_lines(
    tiny_project: Path, tmp_path: Path, capsys
) -> None:
    """experiment=tiny's search (issue 37): no Keras Tuner banner, no Keras epoch wall of per-class metrics."""
    from op_classifier.stages import tune
    from tests.conftest import DATA, paths_under, tiny_cfg

    cfg = tiny_cfg(
        tiny_project, "tuner.max_trials=2", "tuner.epochs=1", "tracking=none", *paths_under(tmp_path, skip=DATA)
    )
    assert tune.run(cfg)["trials"] == 2
    said = capsys.readouterr()
    lines = (said.out + said.err).splitlines()
    assert_short(lines)
    assert len([line for line in lines if line.startswith("trial ")]) == 2, lines
    assert len([line for line in lines if line.startswith("epoch 1/1 - ")]) == 2, lines


def assert_short(lines: list[str]) -> None:
    """No console line past 120 characters, none of Keras Tuner's banners."""
    assert [line for line in lines if len(line) > 120] == []
    banners = ("Search: Running Trial", "Best Value So Far", "Trial 1 Complete", "So Far:", "Reloading Tuner")
    assert [line for line in lines if any(banner in line for banner in banners)] == []


@pytest.mark.parametrize("did_chars, wrote_chars", [(30, 30), (200, 20), (20, 200), (300, 300)])
def test_a_stage_line_fits_and_keeps_what_matters(did_chars: int, wrote_chars: int) -> None:
    did, wrote = "d" * (did_chars - 4) + "DONE", "/w" + "w" * (wrote_chars - 7) + ".json"
    line = stage_line("train", {"did": did, "wrote": wrote, "seconds": 12.5})
    assert len(line) <= 120 and line.startswith("train: dd") and line.endswith(".json (12.5 s)")
    if did_chars + wrote_chars < 100:  # room for both: nothing is cut
        assert line == f"train: {did}; wrote {wrote} (12.5 s)"


def test_files_in_one_folder_name_it_once() -> None:
    assert written("out/a.json", "out/b.csv") == "a.json, b.csv in out/"
    assert written("out/a.json", "elsewhere/b.csv") == "out/a.json, elsewhere/b.csv"
    assert written("out/a.json") == "out/a.json"


def test_a_long_line_names_its_files_without_their_folders_before_cutting_what_was_done() -> None:
    did = "efficientnet_lite, 20 epochs + 4 fine-tuning on CPU"
    line = stage_line(
        "train", {"did": did, "wrote": "model.keras, saved_model/1/ in experiments/model/", "seconds": 95.6}
    )
    assert line == f"train: {did}; wrote model.keras, saved_model/1/ (95.6 s)"  # 123 characters with the folder
    wrote = "/a/long/folder/of/the/project/experiments/metrics.json, /a/long/folder/of/the/project/experiments/x.csv"
    line = stage_line("evaluate", {"did": "val 1.000, test 1.000", "wrote": wrote, "seconds": 9.7})
    assert line == "evaluate: val 1.000, test 1.000; wrote metrics.json, x.csv (9.7 s)"
