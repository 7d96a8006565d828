"""The MLflow UI as a person sees it: the real `op-classifier ui` server, pages rendered by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_classifier.config import Config
from op_classifier.data import sample
from op_classifier.stages import evaluate, prepare, train, tune
from tests.conftest import REPO, compose, free_port, paths_under

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "op-classifier")
CHROMIUM = shutil.which("chromium")
RATES = ("0.0003", "0.003")


def _cfg(root: Path, *overrides: str) -> Config:
    return compose(
        "experiment=tiny", "tuner=none", *paths_under(root), f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *overrides
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """A tiny pipeline trained twice (two learning rates): (root, {rate: evaluate's summary})."""
    root = tmp_path_factory.mktemp("ui")
    shutil.copytree(REPO / "conf", root / "conf")
    sample.generate(root / "data/raw", per_class=8, scenes=4)
    prepare.run(_cfg(root))
    results = {}
    for rate in RATES:
        cfg = _cfg(root, f"train.learning_rate={rate}")
        tune.run(cfg)
        train.run(cfg)
        results[rate] = evaluate.run(cfg)
    return root, results


@pytest.fixture(scope="module")
def ui(project: tuple) -> Iterator[str]:
    """`op-classifier ui` on a free port; yields the runs-table link it printed."""
    root = project[0]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [CLI, "ui", "--port", str(port), f"tracking.uri=sqlite:///{root / 'mlflow.db'}"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        link = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the UI server exited"
            assert time.monotonic() < deadline, "the UI did not come up"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield link
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _render(url: str, out: Path) -> str:
    """The page's text after its scripts ran, as Chromium renders it; a screenshot of it in out."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1600,900",
        "--virtual-time-budget=30000",
    ]
    subprocess.run([*base, f"--screenshot={out}", url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    text = re.sub(r"<style[^>]*>.*?</style>|<script[^>]*>.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _shown(value: float) -> set[str]:
    return {f"{value:.{digits}g}" for digits in range(2, 6)} | {str(round(value, 3)), str(value)}


def test_the_printed_link_opens_the_runs_table_with_val_accuracy(project: tuple, ui: str, tmp_path: Path) -> None:
    assert "/runs?viewStateShareKey=" in ui
    text = _render(ui, tmp_path / "runs.png")
    assert "Traces 0" not in text and "val_accuracy" in text and "test_accuracy" in text
    table = text[text.index("Run Name") :]
    assert table.count("train ") >= 2  # both trainings, named by their main settings
    for rate, result in project[1].items():
        assert f"learning_rate={float(rate)}" in table
        assert _shown(result["val_accuracy"]) & set(table.split()), (result["val_accuracy"], table[:800])


def test_the_compare_page_renders_the_differing_params(project: tuple, ui: str, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project[0] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("op-classifier")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 2
    ids = ",".join(f"%22{run.info.run_id}%22" for run in runs)
    base = ui.split("/#/")[0]
    text = _render(
        f"{base}/#/compare-runs?runs=[{ids}]&experiments=[%22{experiment.experiment_id}%22]", tmp_path / "compare.png"
    )
    assert "train.learning_rate" in text
    for rate in RATES:
        assert str(float(rate)) in text
