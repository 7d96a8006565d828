"""Stage `evaluate`: accuracy, per-class scores, confusion matrix, multi-character scenes; metrics.json.

The story, top to bottom: load the trained model and the prepared val and test splits; predict them
(streamed from disk) and score the predictions (compare/scores.py); write metrics.json, the confusion
CSV (reports/evaluation.py), predictions.csv (compare/paired.py) and the error gallery (reports/
gallery.py); record an MLflow run `evaluate` under the training run, and register the model with what
compare/promotion.py prepares (its score, description and the paired-test judge)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from op_classifier import progress
from op_classifier.compare.paired import write_predictions
from op_classifier.compare.promotion import champion_score, describe, judge, model_scores
from op_classifier.compare.scores import check_finite, score
from op_classifier.config import Config
from op_classifier.data.prepared import RUN_FILE, data_hash, load_manifest, load_split
from op_classifier.data.stream import image_stream
from op_classifier.errors import DataError
from op_classifier.models.common.saving import load_model
from op_classifier.reports.evaluation import draw_figures, write_confusion
from op_classifier.reports.gallery import read_findings, write_gallery
from op_classifier.runner import stage_main, written
from op_classifier.tracking import PREDICTIONS_ARTIFACT, flatten, make_tracker


def predict(model: keras.Model, prepared: Path, split: str, batch_size: int = 64, desc: str = "evaluate") -> np.ndarray:
    """Per-class probabilities for every image of a split, streamed from disk (a bar on a terminal)."""
    images = image_stream(prepared, split, batch_size)
    with progress.bar(len(images.rows), desc) as bar:
        callback = progress.keras_callback(bar, batch_size)
        return np.asarray(model.predict(images, verbose=0, callbacks=[callback]))


def run(cfg: Config) -> dict:
    """Evaluate the trained model; write metrics.json and plot data; log them to the training run."""
    started = time.perf_counter()
    prepared, model_dir = Path(cfg.paths.prepared), Path(cfg.paths.model)
    if not (model_dir / "model.keras").is_file():
        raise DataError(f"{model_dir / 'model.keras'} not found: run the train stage first (`dvc repro train`)")
    record = json.loads((model_dir / RUN_FILE).read_text(encoding="utf-8"))
    manifest = load_manifest(prepared)
    classes = manifest["classes"]
    model = load_model(model_dir / "model.keras")
    splits = {name: load_split(prepared, name) for name in ("val", "test")}
    probs = {name: predict(model, prepared, name, desc=f"evaluate {name}") for name in splits}
    check_finite(probs, model_dir / "model.keras")  # a broken model is never scored, registered or served
    metrics = score(splits, probs, classes)

    metrics_path, predictions = Path(cfg.paths.metrics), Path(cfg.paths.predictions)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_confusion(Path(cfg.paths.confusion), splits["test"].labels, probs["test"], classes)
    write_predictions(
        predictions, classes, manifest["files"], {name: (splits[name].labels, probs[name]) for name in splits}
    )
    gallery = write_gallery(
        Path(cfg.paths.gallery),
        classes,
        splits,
        probs,
        manifest["files"],
        read_findings(Path(cfg.paths.audit_issues)),  # where the audit ran: it is never a dependency
        f"model {model_dir}" + (f", training run {record['run_id']}" if record.get("run_id") else ""),
    )

    flat = flatten(metrics)
    champion = champion_score(flat, cfg.tracking.champion_metric)  # before tracking: a typo fails first
    tracker = make_tracker(cfg.tracking)
    registry: dict[str, Any] = {}
    # Its own run, nested under the training run, which it never reopens: a finished run stays as it
    # ended, whatever happens here. The headline scores also go to the training run, for the runs table.
    training = record.get("run_id")
    with tracker.run("evaluate", tags={"stage": "evaluate"}, parent=training):
        tracker.log_metrics(flat)
        if training:
            tracker.log_to(training, {name: metrics[name] for name in ("val_accuracy", "test_accuracy")})
        for path in (metrics_path, Path(cfg.paths.confusion), gallery):  # the gallery opens in MLflow's viewer
            tracker.log_artifact(path, "evaluation")
        with tempfile.TemporaryDirectory() as tmp:
            kept = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name  # the name compare looks for, whatever the path
            shutil.copyfile(predictions, kept)
            tracker.log_artifact(kept, str(Path(PREDICTIONS_ARTIFACT).parent))
            for path in draw_figures(Path(tmp), metrics, splits, probs, classes, Path(cfg.paths.history)):
                tracker.log_artifact(path, "figures")
        if record.get("model_uri"):
            tracker.score_model(record["model_uri"], model_scores(flat), record.get("dataset"))
            registry = tracker.register(
                record["model_uri"],
                champion,
                cfg.tracking.champion_target,
                cfg.tracking.champion_metric,
                data_hash=data_hash(prepared),
                description=describe(record, metrics, splits),
                judge=judge(predictions, cfg.tracking.champion_metric, cfg.tracking.alpha),
            )
    if "promotion" in registry:  # the significance test's numbers, beside the scores they judged
        metrics_path.write_text(json.dumps({**metrics, "promotion": registry["promotion"]}, indent=2), encoding="utf-8")
    return {
        "did": f"val {metrics['val_accuracy']:.3f}, test {metrics['test_accuracy']:.3f}{_registered(registry)}",
        "wrote": written(metrics_path, predictions, gallery),
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "scenes": metrics["scenes"],
        "gallery": str(gallery),
        **registry,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _registered(registry: dict[str, Any]) -> str:
    """The registry's verdict in a few words: the version, and whether it is the champion now."""
    if "registered_version" not in registry:
        return ""
    return f"; registered v{registry['registered_version']}" + (", the champion" if registry["champion"] else "")


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.evaluate`."""
    stage_main(run)


if __name__ == "__main__":
    main()
