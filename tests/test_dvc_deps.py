"""dvc.yaml's deps name every module a stage runs: changing one must re-run the stage (and nothing else)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from op_classifier.training.sources import closure
from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(stage: str) -> None:
    spec = STAGES[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    needed = {path.relative_to(REPO).as_posix() for path in closure(module)}
    declared = {dep for dep in spec["deps"] if isinstance(dep, str) and dep.startswith("src/")}
    # A folder dep (the model registry's package) covers every file in it, and all of them must run.
    covered = {f for dep in declared if (REPO / dep).is_dir() for f in _files(REPO / dep)}
    files = (declared - {dep for dep in declared if (REPO / dep).is_dir()}) | covered
    assert needed - files == set(), f"dvc.yaml's {stage} stage misses these deps"
    assert files - needed == set(), f"dvc.yaml's {stage} stage declares code it never runs"


def _files(folder: Path) -> set[str]:
    return {path.relative_to(REPO).as_posix() for path in folder.rglob("*.py")}
