"""The MLflow UI as a person sees it: `op-classifier ui` itself, its pages in headless Chromium, artifacts as logged."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, copy_repo, free_port, run_in, wait_until_up

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "op-classifier")
CHROMIUM = shutil.which("chromium")
SECOND_RATE = "0.0005"  # docs/tracking.md's walk-through: `dvc exp run -S train.learning_rate=0.0005`
# Set to a folder (docs/img) to run the walk-through at docs/tracking.md's full size and keep its screenshots there.
SHOTS = os.environ.get("OP_CLASSIFIER_UI_SHOTS")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/tracking.md's walk-through in a fresh copy: the pipeline once (`make run`), then `dvc exp run -S ...`.

    At the tiny experiment's size unless OP_CLASSIFIER_UI_SHOTS asks for that page's own."""
    root = copy_repo(tmp_path_factory.mktemp("ui") / "repo")
    tiny = [] if SHOTS else ["-S", "experiment=tiny"]
    if SHOTS:
        run_in(root, "op-classifier", "sample", "--out", "data/raw")
    else:
        run_in(root, "op-classifier", "sample", "--out", "data/raw", "--per-class", "8", "--scenes", "4")
        run_in(root, "op-classifier", "compose", "experiment=tiny")
    run_in(root, "dvc", "repro")
    run_in(root, "git", "add", "-A")
    run_in(root, "git", "commit", "-qm", "first run")
    run_in(root, "dvc", "exp", "run", *tiny, "-S", f"train.learning_rate={SECOND_RATE}")
    return root


def _client(root: Path) -> Any:
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _trainings(root: Path) -> list[Any]:
    client = _client(root)
    experiment = client.get_experiment_by_name("op-classifier")
    return client.search_runs([experiment.experiment_id], "tags.stage = 'train'", order_by=["attributes.start_time"])


@contextlib.contextmanager
def _serving(root: Path) -> Iterator[tuple[str, str, str | None]]:
    """`op-classifier ui` on a free port, in root as a user starts it: the base URL and the links it printed
    (the trained models', and the trials' once the experiment exists)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [CLI, "ui", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        link = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        trials = server.stdout.readline().strip().rsplit(" ", 1)[-1] if "viewStateShareKey" in link else None
        wait_until_up(f"http://127.0.0.1:{port}/health", server)
        yield f"http://127.0.0.1:{port}", link, trials
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def links(project: Path) -> Iterator[tuple[str, str | None]]:
    """`op-classifier ui` on a free port, in the project as a user starts it; yields the two links it printed."""
    with _serving(project) as (_, link, trials):
        yield link, trials


@pytest.fixture(scope="module")
def ui(links: tuple[str, str | None]) -> str:
    """The link to the trained models' table `op-classifier ui` printed."""
    return links[0]


def _render(url: str, name: str, tmp_path: Path) -> str:
    """The page's text after its scripts ran, as Chromium renders it in a browser never used before.

    A screenshot of it goes to tmp_path (or to OP_CLASSIFIER_UI_SHOTS, for docs/tracking.md) as name."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    shot = Path(SHOTS or tmp_path) / name

    def chromium(*args: str) -> str:
        with tempfile.TemporaryDirectory() as profile:  # a first visit: no stored mode, no saved view
            base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
            size = ["--window-size=1600,900", "--virtual-time-budget=30000"]
            return subprocess.run([*base, *size, *args, url], capture_output=True, text=True, timeout=180).stdout

    chromium(f"--screenshot={shot}")
    text = re.sub(r"<style[^>]*>.*?</style>|<script[^>]*>.*?</script>", " ", chromium("--dump-dom"), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _shown(value: float) -> set[str]:
    return {f"{value:.{digits}g}" for digits in range(2, 6)} | {str(round(value, 3)), str(value)}


def _experiment(ui: str) -> tuple[str, str]:
    """The UI's base URL and the project's experiment id, from the link `op-classifier ui` printed."""
    base, _, route = ui.partition("/#/")
    return base, route.split("/")[1]


def _stage_runs(root: Path, stage: str) -> list[Any]:
    client = _client(root)
    experiment = client.get_experiment_by_name("op-classifier")
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")


def _rows(text: str) -> str:
    """The runs table's text: from its header to its count of rows."""
    return text[text.index("Run Name") : text.index("matching runs") + len("matching runs")]


def test_the_plain_experiment_url_opens_one_row_per_trained_model(project: Path, ui: str, tmp_path: Path) -> None:
    """Issue 40: after a run and one experiment a fresh browser sees the two trained models, not the 14 rows
    (audit, tune, its trials, train, evaluate) every stage logs; in model-training mode, no Assistant panel."""
    base, experiment = _experiment(ui)
    text = _render(f"{base}/#/experiments/{experiment}", "mlflow-runs.png", tmp_path)
    assert "Agent versions" not in text and "Traces 0" not in text and "Training runs" not in text
    assert "Ask a question" not in text  # the Assistant's panel, a third of the width, stays closed
    table = _rows(text)
    trainings = _trainings(project)
    assert len(trainings) == 2  # the first run and the walk-through's experiment
    assert "2 matching runs" in table and "test_accuracy" in table and "val_accuracy" in table, table
    for run in trainings:
        assert run.info.run_name in table or run.info.run_name[:20] in table
        assert _shown(run.data.metrics["val_accuracy"]) & set(table.split()), (run.data.metrics, table[:800])
        assert _shown(run.data.metrics["test_accuracy"]) & set(table.split())  # evaluate's, on its model's row
    others = [run for stage in ("audit", "tune", "trial", "evaluate") for run in _stage_runs(project, stage)]
    assert {"audit", "tune", "trial", "evaluate"} <= {run.data.tags["stage"] for run in others}
    assert not [run.info.run_name for run in others if f" {run.info.run_name} " in table], table
    assert re.search(r"op-classifier v\d", table), table  # the Models column: each row's registered version


def test_the_printed_link_opens_the_runs_table_with_val_accuracy(project: Path, ui: str, tmp_path: Path) -> None:
    assert "/runs?viewStateShareKey=" in ui
    text = _render(ui, "printed-link.png", tmp_path)
    assert "Traces 0" not in text and "val_accuracy" in text and "test_accuracy" in text
    table = _rows(text)
    assert "2 matching runs" in table
    for run in _trainings(project):
        assert run.info.run_name[:20] in table and _shown(run.data.metrics["val_accuracy"]) & set(table.split())


def test_the_trials_link_opens_the_searchs_trials_with_their_scores(
    project: Path, links: tuple[str, str | None], tmp_path: Path
) -> None:
    """The second link `op-classifier ui` prints: the search's trials, each with its score in val_accuracy."""
    trials_link = links[1]
    assert trials_link and trials_link.endswith("viewStateShareKey=op-classifier-trials"), links
    text = _render(trials_link, "mlflow-trials.png", tmp_path)
    trials = _stage_runs(project, "trial")
    table = _rows(text)
    assert trials and f"{len(trials)} matching runs" in table, table
    for run in trials:
        assert f" {run.info.run_name} " in table
        assert _shown(run.data.metrics["val_accuracy"]) & set(table.split()), (run.data.metrics, table[:800])
    # Which search each trial belongs to: its tune run's name, the walk-through's two searches told apart.
    searches = {run.data.tags["search"] for run in trials}
    tunes = {run.info.run_name.removeprefix("tune ") for run in _stage_runs(project, "tune")}
    assert searches == tunes and all(f" {name[:15]}" in table for name in searches), (searches, tunes, table[:800])
    assert not re.search(r" (evaluate|audit|train [a-z]) ", table), table


def test_the_logged_models_page_shows_its_evaluated_accuracy(project: Path, ui: str, tmp_path: Path) -> None:
    """Not the first epoch's numbers (issue 26): the scores evaluate measured, on its data set."""
    base, experiment = _experiment(ui)
    run = _trainings(project)[-1]
    (output,) = run.outputs.model_outputs
    text = _render(f"{base}/#/experiments/{experiment}/models/{output.model_id}", "mlflow-model.png", tmp_path)
    assert "epoch_val_accuracy" not in text and "val_accuracy" in text and "test_accuracy" in text
    assert _shown(run.data.metrics["val_accuracy"]) & set(text.split()), text[:1500]
    assert "raw" in text  # the data set the scores were measured on (data.dvc's)


def test_the_compare_page_shows_the_two_runs_of_the_walk_through(project: Path, ui: str, tmp_path: Path) -> None:
    base, experiment = _experiment(ui)
    ids = ",".join(f"%22{run.info.run_id}%22" for run in _trainings(project))
    text = _render(
        f"{base}/#/compare-runs?runs=[{ids}]&experiments=[%22{experiment}%22]", "mlflow-compare.png", tmp_path
    )
    assert "train.learning_rate" in text and str(float(SECOND_RATE)) in text
    assert "val_accuracy" in text and "Comparing 2" in text


def test_the_evaluate_runs_error_gallery_opens_a_confusion_cells_images(project: Path, ui: str, tmp_path: Path) -> None:
    """Issue 36: the gallery evaluate logged, in MLflow's own artifact viewer (a sandboxed iframe), clicked as a
    person clicks: a confusion cell whose images were hidden shows every one of them."""
    base, experiment = _experiment(ui)
    client = _client(project)
    (evaluated, *_) = client.search_runs(
        [experiment], "tags.stage = 'evaluate'", order_by=["attributes.start_time DESC"], max_results=1
    )
    assert "evaluation/gallery.html" in {a.path for a in client.list_artifacts(evaluated.info.run_id, "evaluation")}
    url = f"{base}/#/experiments/{experiment}/runs/{evaluated.info.run_id}/artifacts/evaluation/gallery.html"
    seen = _in_chromium(_click_through, url, Path(SHOTS or tmp_path) / "mlflow-gallery.png")
    assert seen["cell"]["count"] > 0 and seen["before"] == {"checked": False, "images": 0}
    assert seen["after"] == {"checked": True, "images": min(seen["cell"]["count"], 200)}, seen
    if seen["cell"]["opened"]:  # the largest confusion's link, under the matrix, opens it again
        assert seen["back"]["checked"] and seen["back"]["images"] > 0, seen
        assert seen["left"] == {"checked": False, "images": 0}, seen


def test_the_audit_run_shows_its_counts_and_its_gallery_of_flagged_images(
    project: Path, ui: str, tmp_path: Path
) -> None:
    """Issue 36: `dvc repro` ran the audit stage; its MLflow run holds the counts, and its gallery opens in the
    artifact viewer with the flagged images."""
    base, experiment = _experiment(ui)
    (audited, *_) = _client(project).search_runs(
        [experiment], "tags.stage = 'audit'", order_by=["attributes.start_time DESC"], max_results=1
    )
    assert audited.info.run_name == "audit" and "audit.label" in audited.data.metrics
    url = f"{base}/#/experiments/{experiment}/runs/{audited.info.run_id}/artifacts/audit/gallery.html"
    text = _in_chromium(_read_frame, url, Path(SHOTS or tmp_path) / "mlflow-audit.png")
    assert "Data audit" in text and "single-label images audited" in text
    flagged = int(audited.data.metrics["audit.label"])
    assert f"Label issues: the label given is likely wrong (the suggested one in bold) ({flagged})" in text


# Chrome's DevTools protocol, to click inside MLflow's artifact viewer: its iframe is sandboxed (scripts, no
# same origin) and runs out of process, so only a session attached to that frame can see the gallery.
PICK = """(() => {
  const labels = [...document.querySelectorAll('table.matrix label')];
  const hidden = labels.filter(l => !document.getElementById(l.htmlFor.replace(/^p-/, 'cell-')).checkVisibility());
  const cell = hidden.find(l => l.parentElement.classList.contains('miss')) || hidden[0];
  const opened = document.querySelector('input.pick:checked');
  return cell ? {radio: cell.htmlFor, count: Number(cell.textContent), opened: opened && opened.id} : null;
})()"""
AT = """((selector) => {
  const target = document.querySelector(selector);
  target.scrollIntoView({block: 'center'});
  const r = target.getBoundingClientRect();
  return {x: r.x + r.width / 2, y: r.y + r.height / 2};
})"""
SEEN = """((radio) => {
  const panel = document.getElementById(radio.replace(/^p-/, 'cell-'));
  const shown = [...panel.querySelectorAll('img')].filter(i => i.checkVisibility() && i.naturalWidth > 0);
  return {checked: document.getElementById(radio).checked, images: shown.length};
})"""
FRAME = "(() => { const r = document.querySelector('iframe.mlflow-html-iframe').getBoundingClientRect(); return {x: r.x, y: r.y}; })()"


class _DevTools:
    """One page's DevTools socket: commands to the page or to a frame's session, the frames' script contexts."""

    def __init__(self, socket: Any) -> None:
        self.socket, self.last, self.contexts = socket, 0, []  # contexts: (session or None, context id)

    async def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.last += 1
        message = {"id": self.last, "method": method, "params": params or {}}
        await self.socket.send_json({**message, "sessionId": session} if session else message)
        while True:
            reply = json.loads((await self.socket.receive(timeout=60)).data)
            if reply.get("id") == self.last:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            await self._event(reply)

    async def _event(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.executionContextCreated":
            self.contexts.append((event.get("sessionId"), params["context"]["id"]))
        elif event.get("method") == "Target.attachedToTarget":  # a frame in its own process: hear its contexts
            for method in ("Runtime.enable", "Runtime.runIfWaitingForDebugger"):
                await self.socket.send_json({"id": 0, "method": method, "params": {}, "sessionId": params["sessionId"]})

    async def evaluate(self, expression: str, session: str | None = None, context: int | None = None) -> Any:
        params = {"expression": expression, "returnByValue": True, **({"contextId": context} if context else {})}
        try:
            return (await self.send("Runtime.evaluate", params, session)).get("result", {}).get("value")
        except RuntimeError:  # a context gone with its frame
            return None

    async def gallery(self, selector: str = "table.matrix label") -> tuple[str | None, int]:
        """The session and context of the frame whose page holds the selector (the gallery's matrix), once rendered."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for session, context in list(self.contexts):
                if await self.evaluate(f"!!document.querySelector({json.dumps(selector)})", session, context):
                    return session, context
            await asyncio.sleep(0.5)
            await self.send("Runtime.evaluate", {"expression": "1"})  # lets the frames' events arrive
        raise AssertionError("the gallery never showed in MLflow's artifact viewer")


@contextlib.asynccontextmanager
async def _opened(port: int, url: str) -> AsyncIterator[_DevTools]:
    """The browser's page on url (1600 x 900), its frames attached as they come."""
    import aiohttp  # DVC's HTTP client, installed with it: a websocket client

    async with aiohttp.ClientSession() as http:
        targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        address = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with http.ws_connect(address, max_msg_size=0) as socket:
            page = _DevTools(socket)
            await page.send(
                "Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True}
            )
            await page.send("Runtime.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
            await page.send("Page.navigate", {"url": url})
            yield page


async def _screenshot(page: _DevTools, shot: Path) -> None:
    shot.write_bytes(base64.b64decode((await page.send("Page.captureScreenshot", {"format": "png"}))["data"]))


async def _click_through(port: int, url: str, shot: Path) -> dict:
    async with _opened(port, url) as page:
        session, context = await page.gallery()
        frame = await page.evaluate(FRAME)

        async def seen(radio: str) -> dict:
            return await page.evaluate(f"{SEEN}({json.dumps(radio)})", session, context)

        async def click(selector: str) -> None:  # at the element's middle, as a mouse clicks
            at = await page.evaluate(f"{AT}({json.dumps(selector)})", session, context)
            where = {"x": frame["x"] + at["x"], "y": frame["y"] + at["y"], "button": "left", "clickCount": 1}
            for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                await page.send("Input.dispatchMouseEvent", {"type": kind, **where})
            await asyncio.sleep(1)

        cell = await page.evaluate(PICK, session, context)
        assert cell, "the gallery's matrix has no cell to open"
        done = {"cell": cell, "before": await seen(cell["radio"])}
        await click(f"table.matrix label[for={cell['radio']}]")
        done["after"] = await seen(cell["radio"])
        if cell["opened"]:  # back to the cell the page opened on (the largest confusion), by its link
            await click(f".errors label[for={cell['opened']}]")
            done["back"], done["left"] = await seen(cell["opened"]), await seen(cell["radio"])
        await page.evaluate("window.scrollTo(0, 0)", session, context)
        await page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 0, "y": 0})  # no hover outline
        await _screenshot(page, shot)
        return done


async def _read_frame(port: int, url: str, shot: Path) -> str:
    async with _opened(port, url) as page:
        session, context = await page.gallery("#op-audit")
        text = await page.evaluate("document.body.innerText", session, context)
        await _screenshot(page, shot)
        return text


def _in_chromium(run: Any, url: str, shot: Path) -> Any:
    """In a fresh headless Chromium with its DevTools port: `run(port, url, shot)`, and what it returned."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
            + ["--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            said = (re.search(r"ws://127.0.0.1:(\d+)/", line) for line in browser.stderr)
            port = next((int(found.group(1)) for found in said if found), None)
            assert port, "chromium printed no DevTools address"
            return asyncio.run(run(port, url, shot))
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()


# Issue 35, case 6: the first-visit script goes into the UI's own page, never into what a run logged.
REPORT = b"<!doctype html><html><head></head><body>a report.</body></html>\n"  # 64 bytes, as the probe's
SCRIPT = b"<head><script>(function () {"  # how FIRST_VISIT opens, right after the page's <head>


@pytest.fixture(scope="module")
def logged_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`op-classifier ui` on a store whose one run logged report.html; the UI's base URL and the run's id."""
    import mlflow

    root = tmp_path_factory.mktemp("ui-artifacts")
    shutil.copytree(REPO / "conf", root / "conf")
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment("op-classifier", artifact_location=(root / "mlartifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    (root / "report.html").write_bytes(REPORT)
    client.log_artifact(run_id, str(root / "report.html"))
    client.set_terminated(run_id)
    with _serving(root) as (base, _, _):
        yield base, run_id


def _get(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read(), answer.headers.get_content_type()


def test_a_logged_html_artifact_downloads_byte_for_byte(logged_report: tuple[str, str]) -> None:
    """Before: the 64-byte report.html came back from /get-artifact as 1,016 bytes, the UI's script inside."""
    base, run_id = logged_report
    body, kind = _get(f"{base}/get-artifact?path=report.html&run_uuid={run_id}")  # the UI's artifact viewer
    assert kind == "text/html" and body == REPORT, f"{len(body)} bytes"
    assert len(REPORT) == 64


def test_the_ui_page_still_gets_the_first_visit_script(logged_report: tuple[str, str]) -> None:
    base, _ = logged_report
    for route in ("/", "/?o=1"):
        body, kind = _get(f"{base}{route}")
        assert kind == "text/html" and body.count(SCRIPT) == 1 and b"mlflow.workflowType_v1" in body
