"""Stage `train`: the final model from config plus the tuned values; saves model.keras and a SavedModel.

The story: load what tune chose, build the model, fit its phases (training/phases.py: the head, then the
backbone's top layers; a killed run resumes), record it (the saved model, MLflow, the run file for evaluate).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier import progress
from op_classifier.config import Config, ConfigError, ModelBase, as_dict
from op_classifier.data.prepared import RUN_FILE, data_hash, dvc_hash, load_manifest, load_split
from op_classifier.metric_names import metric_names
from op_classifier.runner import stage_main
from op_classifier.tracking import RUN_ID_FILE, NullTracker, flatten, git_commit, make_tracker, run_name
from op_classifier.training import distributed, hparams, phases, saving, state
from op_classifier.training.build import build
from op_classifier.training.distributed import Cluster

# The params sections this stage declares in dvc.yaml: its checkpoint belongs to their values.
PARAMS = ("seed", "data.image_size", "model", "train")
STAGE = "op_classifier.stages.train"  # its state belongs to the code this module runs


def run(cfg: Config) -> dict:
    """Train, save, log the model; record the run for evaluate.

    Under KERAS_DISTRIBUTION_* (distributed.py) this process first joins a multi-process run; then only
    the chief (process 0) writes files and logs, and every process reports its weights' digest.
    """
    started = time.perf_counter()
    cluster = distributed.join(cfg.train.batch_size)  # first: nothing is written before every check passed
    with distributed.fail_fast(cluster):
        return _run(cfg, cluster, started)


def _run(cfg: Config, cluster: Cluster, started: float) -> dict:
    # Load: the classes, and what tune chose (its values, the architecture it drew).
    prepared = Path(cfg.paths.prepared)
    manifest = load_manifest(prepared, cfg.data.image_size)
    classes = manifest["classes"]
    if cfg.train.monitor not in metric_names(classes):
        raise ConfigError(f"train.monitor: the model does not report '{cfg.train.monitor}'")
    best = hparams.read_best(Path(cfg.paths.best_hparams), hparams.search_record(cfg))
    tuned = best.get("values") or {}
    cfg = dataclasses.replace(cfg, train=hparams.tuned_train(cfg.train, tuned))  # a fine-tuning search's keys
    model_cfg = hparams.trained_model(cfg.model, best)
    # Build: the checkpoint folder kept only if this very training made it, the compiled model.
    made_by = claim_checkpoints(cfg, tuned, model_cfg, claim=cluster.chief)
    model, described = build(cfg, classes, tuned, model_cfg, cluster.processes)
    plan = phases.plan(cfg, model, described["learning_rate_used"], cluster)
    # Fit, inside the tracker's run (resumed with the checkpoint).
    tracker = make_tracker(cfg.tracking) if cluster.chief else NullTracker()
    tags = {
        "stage": "train",
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "data_hash": made_by["data"],
        "tuning_run_id": best.get("tuning_run_id"),
    }
    params = {**flatten(as_dict(cfg)), **described, "state_fingerprint": made_by["id"]}
    resume = Path(cfg.paths.checkpoints) / RUN_ID_FILE
    with tracker.run(
        run_name("train", _settings(cfg)), resume_file=resume, tags=tags, params=params, system_metrics=True
    ) as run_id:
        # The data as DVC tracks it (data/raw and its .dvc hash), else as this stage read it (prepared).
        raw = Path(cfg.paths.raw)
        tracked = dvc_hash(raw)
        name, data_digest, source = (raw.name, tracked, raw) if tracked else (prepared.name, made_by["data"], prepared)
        tracker.log_dataset(name, data_digest, source, manifest["counts"], prepared_hash=made_by["data"])
        summary = phases.fit(cfg, model, plan, tracker.epoch_callback(), classes, cluster)
        digest = distributed.weights_digest(model)
        if not cluster.chief:
            return {**summary, "process": cluster.rank, "weights_sha256": digest}
        # Record: the saved model, the MLflow model, the history's plot.
        model = distributed.local_copy(model, cluster)
        with progress.bar(2, "export", unit="step") as bar:  # seconds each: tracing, saving, MLflow's checks
            bar.set_postfix_str("model.keras, SavedModel")
            written = saving.save(model, Path(cfg.paths.model))
            bar.update()
            bar.set_postfix_str("MLflow model")
            example = np.asarray(load_split(prepared, "val").images[:1], dtype="float32")
            model_uri = tracker.log_model(model, example)
            bar.update()
        tracker.log_artifact(Path(cfg.paths.history), "plots")
    record = {
        "run_id": run_id,
        "model_uri": model_uri,
        "classes": classes,
        "image_size": cfg.data.image_size,
        "dataset": {"name": name, "digest": data_digest, "source": str(source)},  # evaluate scores the model on it
    }
    (Path(cfg.paths.model) / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    done = {**summary, "device": described["device"], "weights_sha256": digest, **written, "run_id": run_id}
    done["seconds"] = round(time.perf_counter() - started, 1)
    saved = ", ".join(
        f"{Path(path).relative_to(cfg.paths.model)}{'/' * Path(path).is_dir()}" for path in written.values()
    )
    return {**done, "did": _did(done, described["architecture_used"]), "wrote": f"{saved} in {cfg.paths.model}/"}


def claim_checkpoints(
    cfg: Config, tuned: dict[str, Any], model_cfg: ModelBase | None = None, claim: bool = True
) -> dict[str, Any]:
    """Keep the checkpoint folder only if it was made by this config, data, code and tuned values
    (with claim off, only the fingerprint: a multi-process run's other processes touch no file)."""
    model_cfg = model_cfg or cfg.model
    drawn = {} if model_cfg is cfg.model else {"architecture": as_dict(model_cfg)}
    selected = state.select(as_dict(cfg), PARAMS)
    made_by = state.fingerprint(selected, data_hash(Path(cfg.paths.prepared)), STAGE, model_cfg, tuned=tuned, **drawn)
    if claim:
        state.claim(Path(cfg.paths.checkpoints), made_by, "training checkpoint", keep=(RUN_ID_FILE,))
    return made_by


def _settings(cfg: Config) -> dict[str, Any]:
    """What tells one training from another in the runs table (every param is logged besides)."""
    chosen = {"tuner": cfg.tuner.kind} if cfg.tuner.kind != "none" else {"learning_rate": cfg.train.learning_rate}
    epochs = cfg.train.epochs + cfg.train.fine_tune_epochs
    return {"model": cfg.model.name, "image_size": cfg.data.image_size, **chosen, "epochs": epochs, "seed": cfg.seed}


def _did(done: dict, architecture: str) -> str:
    """What the stage trained, for its one line: the architecture, its epochs, the device, whether resumed."""
    fine = f" + {done['fine_tune_epochs_run']} fine-tuning" if "fine_tune_epochs_run" in done else ""
    resumed = " (resumed)" if done["resumed"] else ""
    epochs = f"{done['epochs_run']} epoch{'s' if done['epochs_run'] != 1 else ''}"
    return f"{architecture}, {epochs}{fine} on {done['device']}{resumed}"


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.train`."""
    stage_main(run)


if __name__ == "__main__":
    main()
