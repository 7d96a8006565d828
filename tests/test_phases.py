"""The training's phases as a plan: what runs, and where a killed run stands (phases.json, not marker files)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from op_classifier.training import phases
from tests.conftest import compose

PRETRAINED = SimpleNamespace(layers=[SimpleNamespace(name="backbone", trainable=False)])
FROM_SCRATCH = SimpleNamespace(layers=[SimpleNamespace(name="conv", trainable=True)])


def _cfg(tmp_path: Path, *overrides: str):
    return compose(f"paths.checkpoints={tmp_path / 'ckpt'}", *overrides)


def test_a_pretrained_model_trains_its_head_then_fine_tunes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.epochs=5", "train.fine_tune_epochs=3", "train.head_on_features=true")
    head, fine = phases.plan(cfg, PRETRAINED, 0.01)
    assert (head.name, head.epochs, head.learning_rate, head.on_features, head.ended) == ("head", 5, 0.01, True, None)
    assert (fine.name, fine.epochs, fine.unfreeze, fine.ended) == ("fine_tune", 3, cfg.train.fine_tune_layers, None)
    assert fine.learning_rate == cfg.train.learning_rate * cfg.train.fine_tune_lr_factor  # not the head's tuned one
    assert head.backup != fine.backup


def test_a_model_from_scratch_has_one_phase(tmp_path: Path) -> None:
    (only,) = phases.plan(_cfg(tmp_path, "train.fine_tune_epochs=3", "train.head_on_features=true"), FROM_SCRATCH, 0.01)
    assert only.name == "head" and not only.on_features and not only.unfreeze


def test_the_plan_says_where_a_killed_run_stands(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.epochs=5", "train.fine_tune_epochs=3")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / phases.STATE_FILE).write_text(json.dumps({"head": 4}))  # early stopping ended it at 4
    head, fine = phases.plan(cfg, PRETRAINED, 0.01)
    assert head.ended == 4 and fine.ended is None  # the fine-tuning resumes from its own backup, after epoch 4
