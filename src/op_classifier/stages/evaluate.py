"""Stage `evaluate`: accuracy, per-class scores, confusion matrix, multi-character scenes; metrics.json."""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from op_classifier import progress
from op_classifier.compare import paired
from op_classifier.compare.paired import per_class, write_predictions
from op_classifier.config import Config, ConfigError
from op_classifier.data.prepared import RUN_FILE, Split, data_hash, load_manifest, load_split, single_label, top1
from op_classifier.data.stream import image_stream
from op_classifier.errors import DataError
from op_classifier.metric_names import metric_split
from op_classifier.models.common import load_model
from op_classifier.reports.gallery import read_findings, write_gallery
from op_classifier.runner import stage_main
from op_classifier.tracking import PREDICTIONS_ARTIFACT, flatten, make_tracker

THRESHOLD = 0.5


def predict(model: keras.Model, prepared: Path, split: str, batch_size: int = 64, desc: str = "evaluate") -> np.ndarray:
    """Per-class probabilities for every image of a split, streamed from disk (a bar on a terminal)."""
    images = image_stream(prepared, split, batch_size)
    with progress.bar(len(images.rows), desc) as bar:
        callback = progress.keras_callback(bar, batch_size)
        return np.asarray(model.predict(images, verbose=0, callbacks=[callback]))


def scenes(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """On images with several characters: per-character recall at 0.5, and exact-set accuracy."""
    multi = labels.sum(axis=1) > 1
    if not multi.any():
        return {"count": 0}
    truth, said = labels[multi] > 0.5, probs[multi] >= THRESHOLD
    recall = {name: float(said[truth[:, i], i].mean()) if truth[:, i].any() else None for i, name in enumerate(classes)}
    return {
        "count": int(multi.sum()),
        "exact_set_accuracy": float((truth == said).all(axis=1).mean()),
        "mean_recall": float(said[truth].mean()),
        "recall": recall,
    }


def write_confusion(path: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """One `actual,predicted` row per single-character test image, for `dvc plots show`."""
    single = single_label(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        for truth, guess in zip(labels[single].argmax(1), probs[single].argmax(1)):
            writer.writerow([classes[truth], classes[guess]])


def evaluate(
    model: keras.Model, prepared: Path, classes: list[str]
) -> tuple[dict[str, Any], dict[str, Split], dict[str, np.ndarray]]:
    """All metrics on val and test; also both splits and their predictions."""
    val, test = load_split(prepared, "val"), load_split(prepared, "test")
    val_probs = predict(model, prepared, "val", desc="evaluate val")
    test_probs = predict(model, prepared, "test", desc="evaluate test")
    both = np.concatenate([val.labels, test.labels]), np.concatenate([val_probs, test_probs])
    metrics = {
        "val_accuracy": top1(val.labels, val_probs),
        "test_accuracy": top1(test.labels, test_probs),
        "test_per_class": per_class(test.labels, test_probs, classes),
        "scenes": scenes(*both, classes),
    }
    return metrics, {"val": val, "test": test}, {"val": val_probs, "test": test_probs}


def draw_figures(
    folder: Path,
    metrics: dict[str, Any],
    splits: dict[str, Split],
    probs: dict[str, np.ndarray],
    classes: list[str],
    history: Path,
) -> list[Path]:
    """The PNGs attached to the run: learning curves, confusion matrix, per-class scores, worst images."""
    from op_classifier.reports import figures

    test, val = splits["test"], splits["val"]
    drawn = [
        figures.learning_curves(history, folder / "learning_curves.png"),
        figures.confusion_matrix(test.labels, probs["test"], classes, folder / "confusion_matrix.png"),
        figures.per_class_scores(metrics["test_per_class"], folder / "per_class_scores.png"),
        figures.worst_classified(val.images, val.labels, probs["val"], classes, folder / "worst_val_images.png"),
    ]
    return [path for path in drawn if path is not None]


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
    metrics, splits, probs = evaluate(model, prepared, classes)
    for split, scores in probs.items():  # a broken model is never scored, registered or served
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores).all(axis=1)).sum())
            raise DataError(
                f"{model_dir / 'model.keras'} answers NaN or infinity for {bad} {split} image(s): it is broken "
                "(train it again); nothing is written or registered"
            )
    test, test_probs = splits["test"], probs["test"]
    metrics_path, predictions = Path(cfg.paths.metrics), Path(cfg.paths.predictions)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_confusion(Path(cfg.paths.confusion), test.labels, test_probs, classes)
    scored = {name: (splits[name].labels, probs[name]) for name in ("val", "test")}
    write_predictions(predictions, classes, manifest["files"], scored)
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
    score = _champion_score(flat, cfg.tracking.champion_metric)  # before tracking: a typo fails first
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
                score,
                cfg.tracking.champion_target,
                cfg.tracking.champion_metric,
                data_hash=data_hash(prepared),
                description=describe(record, metrics, splits),
                judge=_judge(predictions, cfg.tracking.champion_metric, cfg.tracking.alpha),
            )
    if "promotion" in registry:  # the significance test's numbers, beside the scores they judged
        metrics_path.write_text(json.dumps({**metrics, "promotion": registry["promotion"]}, indent=2), encoding="utf-8")
    return {
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "scenes": metrics["scenes"],
        "gallery": str(gallery),
        **registry,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _judge(predictions: Path, metric: str, alpha: float) -> paired.Judge | None:
    """The paired test that promotes this model over the champion, on the champion metric's split."""
    split = metric_split(metric)
    return paired.judge(predictions, split, alpha) if split else None


def model_scores(flat: dict[str, Any]) -> dict[str, float]:
    """What the logged model carries: val and test accuracy and each class's test F1."""
    return {
        key: value for key, value in flat.items() if key in ("val_accuracy", "test_accuracy") or key.endswith(".f1")
    }


def describe(record: dict[str, Any], metrics: dict[str, Any], splits: dict[str, Split]) -> str:
    """A registered version's description: what the model is and how it was scored."""
    classes, size = ", ".join(record["classes"]), record["image_size"]
    data = record.get("dataset") or {}
    from op_classifier.reports.figures import single_count

    scored = ", ".join(
        f"{name}_accuracy {metrics[f'{name}_accuracy']:.4f} on {single_count(split.labels)}"
        for name, split in splits.items()
    )
    return (
        f"Classifies {size}x{size} RGB images (0..255 pixels) into {classes}, one sigmoid per class. "
        f"Trained in run {record.get('run_id')}; scored by the evaluate stage on data "
        f"'{data.get('name', 'prepared')}' (digest {data.get('digest', '?')}), top-1: {scored}."
    )


def _champion_score(flat: dict[str, Any], metric: str) -> float:
    if metric not in flat:
        raise ConfigError(
            f"tracking.champion_metric: evaluate reports no '{metric}' (e.g. val_accuracy, test_accuracy)"
        )
    return float(flat[metric])


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.evaluate`."""
    stage_main(run)


if __name__ == "__main__":
    main()
