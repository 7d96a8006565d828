"""`op-classifier export --format litert`: a trained model as a LiteRT file for small devices, checked.

The file keeps the served contract in every quantisation: (batch, S, S, 3) float32 raw 0..255 pixels
in, one sigmoid per class out. `none` is float32; `float16` halves the weights (computed in float32);
`int8` is full-integer post-training quantisation calibrated on export.calibration_images images of
the training split, float32 in and out (quantised at the edges). The model is traced with
training=False, so augmentation and dropout leave no op. The class list goes inside the file
(litert.METADATA_NAME), where predict reads it.

Parity is measured, never assumed: the file runs on LiteRT's interpreter over the prepared test split
beside the Keras model; the summary gives top-1 agreement and both top-1 accuracies (evaluate's
metric), and a note when they miss AGREEMENT or INT8_ACCURACY_DROP. An `export` run in MLflow holds
the file and the figures; a registered version exported (the champion by default) gets them as tags.
The converter is TensorFlow's, so this command runs on the TensorFlow backend (a JAX model loads there).
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier import quiet, tracking
from op_classifier.config import CHAMPION, Config
from op_classifier.data.prepared import Split, load_manifest, load_split, top1
from op_classifier.errors import DataError, OpClassifierError, first_line
from op_classifier.serving import litert, predict
from op_classifier.serving.output import check_target, write_whole

AGREEMENT = {"none": 0.99, "float16": 0.99, "int8": 0.97}  # top-1 agreement with Keras on the test split
INT8_ACCURACY_DROP = 0.01  # int8's test accuracy within 1 point of the Keras model's
BATCH = 64


class ExportError(OpClassifierError):
    """The model cannot be exported as asked."""

    exit_code = 2


def run(cfg: Config, source: str | None = None, quantize: str | None = None, out: Path | None = None) -> dict:
    """Export source (default: the champion) as a LiteRT file, check it on the test split, log it; a summary."""
    started = time.perf_counter()
    quantize = quantize or cfg.export.quantize
    source = source or f"models:/{cfg.tracking.model_name}@{CHAMPION}"
    out = out or Path(cfg.paths.export) / f"model-{quantize}{litert.SUFFIX}"
    if out.suffix != litert.SUFFIX:
        raise ExportError(f"--out {out}: a LiteRT file's name ends in {litert.SUFFIX}")
    check_target(out, "--out")  # before the converter's seconds
    store = tracking.open_store(cfg.tracking)
    classifier = _keras_model(source, store)
    test = _split(cfg, "test", classifier)
    calibration = _calibration(cfg, classifier) if quantize == "int8" else None
    file = litert.with_metadata(
        convert(classifier.model, quantize, calibration),
        {"classes": classifier.classes, "image_size": classifier.image_size, "quantize": quantize, "source": source},
    )
    write_whole(out, file, "--out")  # a reader sees the old file or the new one, never half of one
    figures = parity(classifier.model, litert.load(out), test)
    summary = {"litert": str(out), "quantize": quantize, "bytes": len(file), "source": source, **figures}
    summary.update(_log(cfg, store, source, out, summary))
    for line in _misses(quantize, figures):
        print(f"note: {line}", file=sys.stderr)
    return {**summary, "seconds": round(time.perf_counter() - started, 1)}


def _keras_model(source: str, store: tracking.ModelStore) -> predict.Classifier:
    if source.endswith(litert.SUFFIX):
        raise ExportError(f"--model {source}: already a LiteRT model; export a Keras model (a folder or a URI)")
    classifier = predict.load_classifier(source, store)
    if isinstance(classifier.model, litert.LiteRTModel):
        raise ExportError(f"--model {source}: holds a LiteRT model, not model.keras")
    return classifier


def _split(cfg: Config, name: str, classifier: predict.Classifier) -> Split:
    """A prepared split the model can be checked or calibrated on: same classes, same image size."""
    prepared = Path(cfg.paths.prepared)
    try:
        classes, split = load_manifest(prepared)["classes"], load_split(prepared, name)
    except DataError as error:
        raise ExportError(f"export needs the prepared {name} split: {error}") from None
    if classes != classifier.classes:
        raise ExportError(f"{prepared} holds classes {classes}, the model {classifier.classes}: prepare its data")
    side = split.images.shape[1]
    if side != classifier.image_size:
        raise ExportError(
            f"{prepared} is prepared at {side} px, the model takes {classifier.image_size}: "
            f"prepare with data.image_size={classifier.image_size}"
        )
    return split


def _calibration(cfg: Config, classifier: predict.Classifier) -> np.ndarray:
    """export.calibration_images of the training split (all of it when smaller), drawn with the seed."""
    images = _split(cfg, "train", classifier).images
    count = min(cfg.export.calibration_images, len(images))
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(images), count, replace=False))
    return np.asarray(images[rows], np.float32)


def convert(model: Any, quantize: str, calibration: np.ndarray | None = None) -> bytes:
    """The model as LiteRT flatbuffer bytes, LiteRT's builtin ops only; ExportError naming the layer if not."""
    import tensorflow as tf

    from op_classifier.models.common.saving import export_saved_model

    with tempfile.TemporaryDirectory(prefix="op-classifier-export-") as tmp:
        export_saved_model(model, Path(tmp))  # the SavedModel TensorFlow Serving gets: training=False
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        try:
            with quiet.unless_verbose():
                return converter.convert()
        except Exception as error:  # the converter's ConverterError, and whatever its MLIR passes raise
            raise ExportError(_refusal(error, model)) from None


def _refusal(error: Exception, model: Any) -> str:
    """One line: which layer holds an op LiteRT cannot run, read from the converter's error locations."""
    known = {layer.name for layer in model._flatten_layers(include_self=False)}
    layers, ops = [], []
    for data in getattr(error, "errors", []):
        ops.append(data.operator.name)
        for call in data.location.call[:1]:  # e.g. "seed_cnn_1/odd_tan_1/Tan@__inference_...": scopes, then the op
            scopes = [re.sub(r"_\d+$", "", scope) for scope in call.name.split("@")[0].split("/")[:-1]]
            inner = [scope for scope in scopes if scope in known]
            if inner and inner[-1] not in layers:
                layers.append(inner[-1])
    if layers:
        return f"LiteRT cannot run layer {', '.join(repr(n) for n in layers)} ({', '.join(sorted(set(ops)))})"
    return f"the LiteRT converter refused the model: {first_line(error)}"


def parity(model: Any, lite: litert.LiteRTModel, split: Split) -> dict[str, Any]:
    """Top-1 agreement of the LiteRT file with the Keras model over a split, and both top-1 accuracies."""
    keras_probs, lite_probs = [], []
    for start in range(0, len(split.images), BATCH):
        batch = np.asarray(split.images[start : start + BATCH], np.float32)
        keras_probs.append(np.asarray(model.predict_on_batch(batch)))
        lite_probs.append(lite.predict_on_batch(batch))
    ours, theirs = np.concatenate(keras_probs), np.concatenate(lite_probs)
    return {
        "test_images": len(split.images),
        "agreement": round(float((ours.argmax(1) == theirs.argmax(1)).mean()), 4),
        "max_probability_difference": round(float(np.abs(ours - theirs).max()), 6),
        "keras_test_accuracy": round(top1(split.labels, ours), 4),
        "litert_test_accuracy": round(top1(split.labels, theirs), 4),
    }


def _misses(quantize: str, figures: dict[str, Any]) -> list[str]:
    """What the figures say against the targets: nothing when the file is as good as promised."""
    lines = []
    if figures["agreement"] < AGREEMENT[quantize]:
        lines.append(
            f"top-1 agreement {figures['agreement']:.2%} is below {quantize}'s target {AGREEMENT[quantize]:.0%}"
        )
    drop = figures["keras_test_accuracy"] - figures["litert_test_accuracy"]
    if quantize == "int8" and drop > INT8_ACCURACY_DROP:
        lines.append(f"int8 loses {drop:.1%} of test accuracy (target: at most {INT8_ACCURACY_DROP:.0%})")
    return lines


def _log(cfg: Config, store: tracking.ModelStore, source: str, out: Path, summary: dict) -> dict[str, Any]:
    """An `export` run holding the file and its figures; the exported registered version tagged with them."""
    figures = {f"litert_{summary['quantize']}_{key}": value for key, value in summary.items() if key != "source"}
    numbers = {key: value for key, value in figures.items() if isinstance(value, (int, float))}
    tracker = tracking.make_tracker(cfg.tracking)
    name = tracking.run_name("export", {"quantize": summary["quantize"], "model": source})
    tags = {"stage": "export", "source_model": source}
    # Under the training run of the model it exported, as evaluate's is: the runs table's row of that model.
    with tracker.run(name, tags=tags, parent=store.training_run(source)) as run_id:
        tracker.log_metrics(numbers)
        tracker.log_artifact(out, "litert")
    ref = tracking.registered(source)
    version = _version(ref, store) if ref is not None else None
    if version is not None and run_id is not None:
        store.set_version_tags(ref.name, version, {**numbers, f"litert_{summary['quantize']}_run_id": run_id})
    return {"run_id": run_id, "registered_version": version}


def _version(ref: tracking.Registered, store: tracking.ModelStore) -> str | None:
    """The registered version a models:/ URI names: its alias's, or its number."""
    if ref.alias:
        return store.alias_version(ref.name, ref.alias)
    return ref.version if (ref.version or "").isdigit() else None
