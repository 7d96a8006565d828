"""Which tuner and budget for the search of a pretrained model's head, measured on its frozen features.

For each prepared folder (one per seed of a split, e.g. the seed folders `op-classifier repeat` or
benchmarks/byo.py --keep leave), the backbone's features are computed once (or read from the cache);
then every tuner kind and budget searches the head exactly as the tune stage does, and the pick's
validation and test accuracy are printed beside the untuned head (the configured learning rate and
dropout, trained the same way), with the search's time. Usage (repository root, .venv active):

    python benchmarks/head_search.py PREPARED [PREPARED ...] [--kinds random bayesian hyperband]
        [--budgets 5 10 20] [override ...]

Overrides (Hydra syntax) go to the composition, e.g. model=efficientnet_lite0 data.image_size=224.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np

from op_classifier.config import compose, validate
from op_classifier.data.prepared import load_manifest, top1
from op_classifier.models import get as architecture
from op_classifier.tracking import NullTracker
from op_classifier.training import features, hparams, tuners
from op_classifier.training.hypermodel import SearchModel, of_config, search_data
from op_classifier.training.leaderboard import SearchData


def configs(prepared: Path, overrides: list[str], kind: str, budget: int) -> object:
    """The composed config for this folder, tuner kind and budget (hyperband's is its max_epochs)."""
    side = load_manifest(prepared)["image_size"]
    budget_key = "tuner.max_epochs" if kind == "hyperband" else "tuner.max_trials"
    return validate(
        compose(
            (
                *overrides,
                f"paths.prepared={prepared}",
                f"data.image_size={side}",
                f"tuner={kind}",
                f"{budget_key}={budget}",
            )
        )
    )


def untuned(cfg: object, hypermodel: SearchModel, data: SearchData) -> keras.Model:
    """The head with the configured learning rate and dropout, trained as a trial (best epoch restored)."""
    hp = kt.HyperParameters()
    hp.Fixed("learning_rate", cfg.train.learning_rate)
    hp.Fixed("dropout", cfg.model.dropout)
    model = hypermodel.build(hp)
    stop = keras.callbacks.EarlyStopping(
        monitor=cfg.tuner.objective, mode="max", patience=cfg.train.patience, restore_best_weights=True
    )
    model.fit(data.train, validation_data=data.val, epochs=cfg.train.epochs, callbacks=[stop], verbose=0)
    return model


def scores(model: keras.Model, data: SearchData, test: features.Features) -> tuple[float, float]:
    """(val, test) top-1 accuracy of a head on the features."""
    return (
        top1(data.val_labels, model.predict(data.val_x, verbose=0)),
        top1(test.y, model.predict(test.x, verbose=0)),
    )


def one_folder(prepared: Path, overrides: list[str], kinds: list[str], budgets: list[int]) -> dict[str, tuple]:
    """Every (kind, budget) and the untuned head on one folder: {name: (val, test, seconds, pick)}."""
    classes = load_manifest(prepared)["classes"]
    base = configs(prepared, overrides, "random", budgets[0])
    if not hparams.searches_head(base):
        sys.exit("error: this config does not search the head alone (a pretrained model, head keys only)")
    model = architecture(base.model.name).build(
        len(classes), base.data.image_size, seed=base.seed, **hparams.model_args(base.model)
    )
    test = features.compute(features.extractor(model), prepared, "test", base.train.batch_size)
    out = {}
    for kind in kinds:
        for budget in [budgets[-1]] if kind == "hyperband" else budgets:
            cfg = configs(prepared, overrides, kind, budget if kind != "hyperband" else base.train.epochs)
            data = search_data(cfg, classes)
            hypermodel = of_config(cfg, classes, data)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                made = tuners.make(cfg.tuner, hypermodel, Path(folder) / "search", cfg.seed, NullTracker())
                tuner = tuners.search(made, data, cfg.seed)
                best = tuner.get_best_models(1)[0]
                pick = tuner.get_best_hyperparameters(1)[0].values
                trials = len(tuner.oracle.trials)
            name = f"{kind} {trials} trials" if kind != "hyperband" else f"hyperband ({trials} trials)"
            out[name] = (*scores(best, data, test), time.perf_counter() - started, pick)
    cfg = configs(prepared, overrides, "random", budgets[0])
    data = search_data(cfg, classes)
    hypermodel = of_config(cfg, classes, data)
    started = time.perf_counter()
    out["untuned (configured)"] = (
        *scores(untuned(cfg, hypermodel, data), data, test),
        time.perf_counter() - started,
        {},
    )
    return out


def main() -> None:
    """Print, for each kind and budget, mean val/test over the folders and the search's time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, nargs="+")
    parser.add_argument("--kinds", nargs="+", default=["random", "bayesian", "hyperband"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    results = [one_folder(p.resolve(), args.overrides, args.kinds, args.budgets) for p in args.prepared]
    print(f"{'search':<24} {'val':>14} {'test':>14} {'seconds':>8}   picks (learning_rate, dropout)")
    for name in results[0]:
        rows = [r[name] for r in results]
        val, test, seconds = ([row[i] for row in rows] for i in range(3))
        picks = "; ".join(f"{p['learning_rate']:g}, {p['dropout']:.1f}" for *_, p in rows if p)
        print(f"{name:<24} {_spread(val):>14} {_spread(test):>14} {statistics.mean(seconds):8.1f}   {picks}")
        print("    per folder: " + "  ".join(f"{v:.3f}/{t:.3f}" for v, t in zip(val, test)), flush=True)


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


if __name__ == "__main__":
    main()
