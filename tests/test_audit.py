"""The audit stage and the corrections it drafts (issue 36, items 2 and 3): cleanlab finds a moved image with
its true class, corrections are applied by prepare, and nothing under data/raw is ever changed."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from op_classifier.audit import corrections
from op_classifier.data.raw import RawDataError
from op_classifier.stages import audit, prepare
from tests.conftest import REPO, mlflow_client, run_in, tiny_cfg

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}
MOVED = "blue/red-07.png"  # a red image filed under blue


def _colour_image(rgb: tuple[int, int, int], seed: int) -> Image.Image:
    """A textured patch of one colour: ImageNet features tell the colours apart, no two images alike."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 25, (48, 48, 3))
    return Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8))


def write_colours(raw: Path, per_class: int = 12) -> None:
    """raw/<colour>/<colour>-NN.png, one image of red moved under blue."""
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(per_class):
            folder = "blue" if f"{name}/{name}-{i:02d}.png" == "red/red-07.png" else name
            path = raw / folder / f"{name}-{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _colour_image(rgb, 100 * c + i).save(path)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes() if path.is_file() else b"/")
    return digest.hexdigest()


AUDIT = ("data.classes=null", "data.image_size=64", "audit.folds=3", "data.near_duplicates=0")


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project of four colours with one image moved, prepared and audited once."""
    root = tmp_path_factory.mktemp("colours")
    shutil.copytree(REPO / "conf", root / "conf")
    write_colours(root / "data/raw")
    cfg = tiny_cfg(root, *AUDIT)
    prepare.run(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OP_CLASSIFIER_CACHE", str(root / "cache"))
        patch.chdir(root)  # the audit reads its backbone's conf/model file from the project
        audit.run(cfg)
    return root


def _issues(root: Path) -> list[dict[str, str]]:
    with (root / "experiments/audit/issues.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_audit_finds_a_moved_image_and_suggests_its_true_class(colours: Path) -> None:
    labels = [row for row in _issues(colours) if row["kind"] == "label"]
    assert labels[0]["path"] == MOVED  # the worst label issue of all
    assert (labels[0]["given"], labels[0]["suggested"]) == ("blue", "red")
    summary = json.loads((colours / "experiments/audit/summary.json").read_text())
    assert summary["audited"] == 48 and summary["label"] == len(labels) and summary["per_class"]["blue"]["label"] >= 1
    page = (colours / "experiments/audit/gallery.html").read_text()
    assert "blue/red-07.png" in page and "data:image/jpeg;base64," in page and "http" not in page


def test_the_audit_is_an_mlflow_run_with_its_counts_and_gallery(colours: Path) -> None:
    client = mlflow_client(colours)
    (run,) = client.search_runs([client.get_experiment_by_name("op-classifier").experiment_id], "tags.stage = 'audit'")
    assert run.info.run_name == "audit" and run.data.metrics["audit.label"] >= 1
    assert run.data.params["audit.backbone"] == "efficientnet_lite0"
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "audit")}
    assert logged == {"audit/issues.csv", "audit/summary.json", "audit/gallery.html"}


def test_suggested_corrections_applied_by_prepare_leave_data_raw_unchanged(colours: Path, tmp_path: Path) -> None:
    """--suggest drafts; the user copies the rows into data/raw's files; prepare relabels and leaves out."""
    raw = colours / "data/raw"
    cfg = tiny_cfg(colours, *AUDIT)
    before = _digest(raw)
    drafted = corrections.suggest(cfg, tmp_path / "drafts")
    assert drafted["relabel"] >= 1 and _digest(raw) == before
    rows = list(csv.reader((tmp_path / "drafts/labels.csv").open(encoding="utf-8")))
    assert rows[0] == ["path", "labels", "reason"] and [MOVED, "red"] == rows[1][:2]
    with pytest.raises(RawDataError, match="exists; name another folder"):
        corrections.suggest(cfg, tmp_path / "drafts")  # never over the drafts
    with pytest.raises(RawDataError, match="write the drafts outside"):
        corrections.suggest(cfg, raw / "drafts")
    project = tmp_path / "project"
    shutil.copytree(colours / "conf", project / "conf")
    shutil.copytree(raw, project / "data/raw")
    (project / "data/raw/labels.csv").write_text(f"path,labels,reason\n{MOVED},red,audit\n")
    (project / "data/raw/exclude.csv").write_text("path,reason\ngreen/green-00.png,a blurry one\n")
    copied = _digest(project / "data/raw")
    manifest = prepare.run(tiny_cfg(project, *AUDIT))["manifest"]
    entries = json.loads(Path(manifest).read_text())
    labels = {entry["path"]: entry["labels"] for entry in entries["files"]}
    assert labels[MOVED] == ["red"] and "green/green-00.png" not in labels
    (excluded,) = [entry for entry in entries["skipped"] if entry["kind"] == "excluded"]
    assert excluded["path"] == "green/green-00.png" and excluded["reason"].endswith("a blurry one")
    assert _digest(project / "data/raw") == copied
    # left out after the split: every other image keeps the split it had without the exclusion list
    (project / "data/raw/exclude.csv").unlink()
    without = json.loads(Path(prepare.run(tiny_cfg(project, *AUDIT))["manifest"]).read_text())
    before = {entry["path"]: entry["split"] for entry in without["files"]}
    assert {entry["path"]: entry["split"] for entry in entries["files"]} == {
        path: split for path, split in before.items() if path != "green/green-00.png"
    }
    assert excluded["split"] == before["green/green-00.png"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("path,reason\nnone/such.png,gone\n", "error: exclude.csv line 2: no file none/such.png in paths.raw"),
        (
            "path,reason\nred/red-00.png\n",
            "error: exclude.csv line 2: expected `path,reason`, both given, got 'red/red-00.png'",
        ),
        ("path,why\n", "error: data/raw/exclude.csv: the first line must be the header `path,reason`"),
        (
            "path,reason\nred/red-00.png,x\nred/red-00.png,y\n",
            "error: exclude.csv line 3: red/red-00.png is listed twice",
        ),
    ],
)
def test_a_bad_exclusion_list_is_one_line_and_exit_2(tmp_path: Path, lines: str, message: str) -> None:
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    write_colours(tmp_path / "data/raw", per_class=3)
    (tmp_path / "data/raw/exclude.csv").write_text(lines)
    done = run_in(tmp_path, "op-classifier", "prepare", *AUDIT, "tracking=none", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "data/prepared").exists()


@pytest.mark.parametrize(
    ("classes", "per_class", "said"),
    [
        (["red"], 6, "the audit needs single-label images of at least two classes, got 1"),
        (["red", "blue"], 3, "has 3 single-label image(s), fewer than audit.folds (5)"),
    ],
)
def test_an_audit_with_too_little_to_audit_says_so_in_one_line(
    tmp_path: Path, classes: list[str], per_class: int, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = tmp_path / "data/raw" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _colour_image(COLOURS[name], 10 * c + i).save(path)
    listed = "data.classes=[red,blue]"  # two classes named, so prepare takes a set of one colour
    fractions = ("data.val_fraction=0.25", "data.test_fraction=0.25")
    cfg = tiny_cfg(tmp_path, *AUDIT, listed, "audit.folds=5", "tracking=none", *fractions)
    prepare.run(cfg)
    capsys.readouterr()
    result = audit.run(cfg)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: nothing audited: ") and said in notes[0]
    assert said in result["skipped"] and result["label"] == 0
    assert json.loads(Path(cfg.paths.audit_summary).read_text())["skipped"] == result["skipped"]
