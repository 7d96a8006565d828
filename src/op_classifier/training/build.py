"""The final model as train builds it: from config plus the tuned values, on the configured device, compiled
as trained (recipe.py); and what the run logs of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from op_classifier.config import Config, ModelBase
from op_classifier.data.prepared import load_manifest
from op_classifier.models import get as architecture
from op_classifier.training import distributed, hparams, recipe
from op_classifier.training.backend import set_random_seed
from op_classifier.training.device import pick_device


def build(
    cfg: Config,
    classes: list[str],
    tuned: dict[str, Any],
    model_cfg: ModelBase | None = None,
    processes: int = 1,
) -> tuple[keras.Model, dict[str, Any]]:
    """The compiled model (model_cfg, else cfg.model, plus tuned values) on the configured device; its params."""
    model_cfg = model_cfg or cfg.model
    scope, device, policy = pick_device(cfg.train)
    args, learning_rate = hparams.final_args(model_cfg, cfg.train, tuned)
    set_random_seed(cfg.seed)
    with scope:
        model = architecture(model_cfg.name).build(len(classes), cfg.data.image_size, seed=cfg.seed, **args)
        rows = load_manifest(Path(cfg.paths.prepared))["counts"]["train"]
        steps = distributed.steps_per_epoch(rows, cfg.train.batch_size, processes)
        recipe.compile_as_trained(model, cfg.train, classes, learning_rate, steps)
    return model, {
        "device": device if processes == 1 else f"{processes} processes x {device} (JAX DataParallel)",
        "processes": processes,
        "precision_policy": policy,  # what train.mixed_precision chose on this machine
        "learning_rate_used": learning_rate,
        "architecture_used": model_cfg.name,  # model.name, or the architecture the search drew
        "classes": json.dumps(classes),
        **{f"tuned.{k}": v for k, v in tuned.items()},
    }
