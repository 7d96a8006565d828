"""The training's phases as a plan: what runs, and where a killed run stands (phases.json, not marker files)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from op_classifier.training import features, phases
from tests.conftest import DATA, compose, paths_under, tiny_cfg

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


class Killed(Exception):
    """Stands for a kill between the head's phase and the first backup of the fine-tuning."""


@pytest.mark.slow
def test_a_run_killed_between_phases_fine_tunes_the_head_it_trained(
    tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from op_classifier.stages import train, tune

    cfg = tiny_cfg(
        tiny_project,
        *("model=efficientnet_lite0", "model.resize=32", "train.warmup_epochs=0", "tuner=none", "tracking=none"),
        *("train.epochs=2", "train.fine_tune_epochs=1", "train.head_on_features=true"),
        *paths_under(tmp_path, skip=DATA),
    )
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "feature-cache"))
    fit, seen = phases._fit, {}

    def killed_at_fine_tuning(cfg, model, phase, *args):
        if phase.name != phases.FINE_TUNE:
            return fit(cfg, model, phase, *args)
        seen[len(seen)] = [w.copy() for w in model.get_layer("probabilities").get_weights()]
        if len(seen) == 1:
            raise Killed
        return fit(cfg, model, phase, *args)

    tune.run(cfg)  # tuner=none: the configured values, as dvc repro writes them
    monkeypatch.setattr(phases, "_fit", killed_at_fine_tuning)
    with pytest.raises(Killed):
        train.run(cfg)
    checkpoints = Path(cfg.paths.checkpoints)
    assert json.loads((checkpoints / phases.STATE_FILE).read_text()) == {"head": 2}
    summary = train.run(cfg)
    assert summary["resumed"] and summary["fine_tune_epochs_run"] == 1
    for trained, resumed in zip(seen[0], seen[1]):  # the head's phase is not run again, and not lost
        np.testing.assert_array_equal(trained, resumed)
    assert not list(checkpoints.glob("*.weights.h5")) and not (checkpoints / phases.STATE_FILE).exists()
