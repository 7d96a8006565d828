"""How the final training compiles a model: optimizer, loss and learning-rate schedule from train.*.

A search of the head alone compiles its trials the same way, so a trial is the head's phase itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from op_classifier.config import TrainConfig
from op_classifier.models.common.compile import compile_model


def learning_rate_schedule(cfg: TrainConfig, peak: float, steps_per_epoch: int) -> Any:
    """The peak learning rate as train.schedule says: constant (plateau) or warm-up then cosine decay."""
    if cfg.schedule == "plateau":
        return peak
    warmup = cfg.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup else peak,
        decay_steps=max(1, cfg.epochs * steps_per_epoch - warmup),
        alpha=0.01,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def compile_as_trained(
    model: keras.Model,
    cfg: TrainConfig,
    classes: Sequence[str],
    learning_rate: float,
    steps: int,
    only: Sequence[str] | None = None,
) -> keras.Model:
    """Compile with train's optimizer and loss; its schedule over `steps` per epoch (0: constant); with
    `only`, just those metrics."""
    return compile_model(
        model,
        learning_rate_schedule(cfg, learning_rate, steps) if steps else learning_rate,
        classes,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        only=only,
    )
