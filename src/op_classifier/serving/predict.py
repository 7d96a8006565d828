"""`op-classifier predict`: class probabilities of image files, as lines, JSON or an HTML report.

    op-classifier predict PATH... [--model DIR|URI] [--threshold 0.5] [--json] [--report FILE] [--batch-size 64]

PATH: image files, folders (recursive, sorted, hidden files skipped) and glob patterns (expanded
here, so quoted globs work, `**` included). A folder or a pattern brings only the files named as
images (IMAGE_SUFFIXES: .jpg, .jpeg, .png, .gif, .webp, .bmp, .tif, .tiff, ... in any case); the
others (labels.csv, notes.txt) are skipped with one `note:` line on stderr. A file named on its
own is always tried. Every file is decoded by its content with the same code as the prepare stage
(`images.load_image`), so any format, EXIF orientation and mode works and decompression bombs are
refused. A file that cannot be predicted is reported on its own and the others go on; the exit
code is then 1.

--model: a model folder as the train stage writes it (`model.keras` + `run.json`; default
`paths.model` of params.yaml, else `experiments/model`), or an MLflow model URI
(`models:/op-classifier@champion`, `models:/op-classifier/3`, `runs:/<run_id>/model`) resolved
through the tracking package's model store; the class names then come from the training run's
`data.classes` param. Or a LiteRT file that `op-classifier export` wrote (`model-int8.tflite`, or a
folder holding one): run on LiteRT's interpreter, TensorFlow never loaded, its class list read from it.

`--json` writes one JSON document on stdout:

    {
      "model": "experiments/model",             the --model value
      "threshold": 0.5,
      "classes": ["Luffy", "Nami", "Sanji", "Zoro"],   the model's output order
      "results": [                              one per predicted file, in input order
        {"path": "data/raw/Luffy/0001.jpg",
         "probabilities": {"Luffy": 0.971, "Nami": 0.02, "Sanji": 0.004, "Zoro": 0.012},
         "predicted": ["Luffy"],                classes with probability >= threshold, class order
         "top": "Luffy"}                        the most probable class
      ],
      "errors": [{"path": "notes.jpg", "error": "not an image (a text file)"}]
    }

Probabilities are independent sigmoid outputs (one image can show several characters), each in
0..1; they do not sum to 1. `--report FILE` also writes a self-contained HTML page (thumbnails
embedded, no external assets) with one card per file, whole or not at all (a full disk is one error line
and no file; a folder or a path under a file is refused before any image is read).

A name holding a character that does not print (a newline, a terminal escape, a byte that is no UTF-8) is
printed, and shown in the report, as Python writes it in a string (`a\\nb.jpg`, `\\x1b`, `\\xff`): no
file or class name forges a line. JSON holds names as they are. A model that answers NaN or infinity is one
error naming it (exit 1), never a line of `nan%`.
"""

from __future__ import annotations

import glob
import itertools
import json
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import yaml

from op_classifier import progress
from op_classifier.config import PARAMS_FILE, ConfigError
from op_classifier.data.images import ImageError, load_image
from op_classifier.data.prepared import RUN_FILE
from op_classifier.data.raw import list_files
from op_classifier.defaults import MAX_IMAGE_PIXELS, PREDICT_BATCH, PREDICT_THRESHOLD
from op_classifier.errors import DataError, first_line
from op_classifier.files import cpu_count
from op_classifier.serving import litert
from op_classifier.serving.output import check_target, shown, write_whole
from op_classifier.serving.report import percent, report_page
from op_classifier.serving.result import Result

if TYPE_CHECKING:
    from op_classifier.tracking import ModelStore

FALLBACK_MODEL = "experiments/model"
MLFLOW_SCHEMES = ("models:/", "runs:/")
# The names Pillow gives the files of the formats images.load_image decodes (images._FORMATS):
# a folder or a pattern brings only these, so labels.csv or notes.txt beside the pictures are no errors.
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".mpo",
        ".png",
        ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".pfm",
        ".ico",
        ".avif",
        ".avifs",
    }
)
TRAIN_HINT = "train a model first (`dvc repro train`, or `make run` for the whole pipeline)"


@dataclass(frozen=True)
class Classifier:
    """A loaded model with what predicting needs besides it."""

    model: Any  # keras.Model; Keras is imported only once a model is found (slow, noisy import)
    classes: list[str]
    image_size: int
    source: str


# --- inputs --------------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Result | str], list[str]]:
    """Every file the inputs name, in order and once each; and the files set aside as not images by name.

    A folder or a pattern brings only files named as images (IMAGE_SUFFIXES); a file named as
    such is always tried. An input that brings no file becomes a failed Result.
    """
    seen: set[str] = set()
    items: list[Result | str] = []
    skipped: dict[str, None] = {}  # ordered set
    for text in inputs:
        found = _files_of(text)
        named = Path(text).exists() and not Path(text).is_dir()
        images = set(found if named else filter(is_image_name, found))
        if not images:
            items.append(Result(text, error=_why_nothing(text, len(found))))
        for path in found:
            if path in seen:
                continue
            if path in images:
                seen.add(path)
                skipped.pop(path, None)
                items.append(path)
            else:
                skipped[path] = None
    return items, list(skipped)


def is_image_name(path: str) -> bool:
    """The file's name ends like an image file's (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _files_of(text: str) -> list[str]:
    path = Path(text)
    if path.is_dir():
        return [str(path / name) for name in list_files(path)]
    if path.exists():  # an existing name wins over reading it as a pattern ("photo[1].jpg")
        return [text]
    if glob.escape(text) == text:
        return []
    matches = sorted(glob.glob(text, recursive=True))
    return [file for match in matches for file in _files_of(match)]


def _why_nothing(text: str, others: int) -> str:
    skipped = f" ({others} skipped: not named as image{'s' if others != 1 else ''})" if others else ""
    if Path(text).is_dir():
        return f"no image files in this folder{skipped}" if others else "no (non-hidden) files in this folder"
    if glob.escape(text) == text:
        return "no such file or folder"
    return f"no image file matches this pattern{skipped}" if others else "no file matches this pattern"


def skipped_note(skipped: Sequence[str], most: int = 3) -> str:
    """One line: how many files were set aside as not images by name, and the first few of them."""
    names = ", ".join(map(shown, skipped[:most])) + (", ..." if len(skipped) > most else "")
    return f"note: skipped {len(skipped)} non-image file{'s' if len(skipped) != 1 else ''} by name ({names})"


# --- the model -----------------------------------------------------------------------------------------


def default_model_folder() -> str:
    """paths.model of params.yaml when it names one (where `dvc repro train` writes), else experiments/model."""
    try:
        params = yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8"))
        return str(params["paths"]["model"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return FALLBACK_MODEL


def load_classifier(source: str, store: ModelStore | None = None) -> Classifier:
    """Load a model folder (model.keras + run.json), an MLflow models:/ or runs:/ URI (from store, by
    default the project's), or a LiteRT file (.tflite, or a folder holding one and no model.keras), the
    last without TensorFlow."""
    if source.startswith(MLFLOW_SCHEMES):
        return _from_mlflow(source, store)
    path = Path(source)
    if path.suffix == litert.SUFFIX:
        return _from_litert(path, source)
    if path.is_dir() and not (path / "model.keras").is_file():
        found = litert.model_file(path)
        if found is not None:
            return _from_litert(found, source)
    return _from_folder(source)


def _from_litert(path: Path, source: str) -> Classifier:
    model = litert.load(path, threads=cpu_count())
    return Classifier(model, model.classes, model.image_size, source)


def _from_folder(source: str) -> Classifier:
    path = Path(source)
    keras_file = path if path.suffix == ".keras" else path / "model.keras"
    if not keras_file.is_file():
        raise DataError(f"{keras_file} not found: {TRAIN_HINT}")
    record_file = keras_file.parent / RUN_FILE
    try:
        classes = json.loads(record_file.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{record_file} is missing or names no classes: re-run the train stage (`dvc repro train`)"
        ) from None
    return _loaded(keras_file, classes, source)


def _from_mlflow(uri: str, store: ModelStore | None) -> Classifier:
    from op_classifier import tracking

    with tempfile.TemporaryDirectory(prefix="op-classifier-model-") as tmp:
        keras_file, classes = (store or tracking.open_store()).fetch(uri, Path(tmp))
        if not classes:
            raise DataError(
                f"{uri}: its training run logged no class list (param data.classes); "
                "predict with the model folder instead (--model experiments/model)"
            )
        return _loaded(keras_file, classes, uri)


def _loaded(keras_file: Path, classes: Sequence[str], source: str) -> Classifier:
    from op_classifier.models.common.saving import load_model

    try:
        model = load_model(keras_file)
    except DataError:  # not a whole model file: load_model's line says so
        raise
    except Exception as error:  # a corrupt or foreign file raises many types; all mean "cannot use it"
        raise DataError(f"{keras_file}: cannot load the model ({first_line(error)})") from None
    _, height, width, channels = model.input_shape
    if height != width or channels != 3:
        raise DataError(f"{keras_file}: expects {model.input_shape[1:]} input, not square RGB images")
    if model.output_shape[-1] != len(classes):
        raise DataError(f"{keras_file}: {model.output_shape[-1]} outputs but {len(classes)} class names")
    return Classifier(model, list(classes), int(height), source)


# --- predicting ----------------------------------------------------------------------------------------


def predict_items(classifier: Classifier, items: Sequence[Result | str], batch_size: int) -> Iterator[Result]:
    """Decode and predict in batches; yield one Result per item, in order."""
    with ThreadPoolExecutor(cpu_count()) as pool:
        for chunk in _decoded_chunks(items, classifier.image_size, batch_size, pool):
            yield from _predict_chunk(classifier, chunk)


def _decoded_chunks(
    items: Sequence[Result | str], size: int, batch_size: int, pool: ThreadPoolExecutor
) -> Iterator[list[Result | tuple[str, np.ndarray]]]:
    """Items decoded chunk by chunk; the next chunk decodes while the caller predicts this one."""
    chunks = iter([items[i : i + batch_size] for i in range(0, len(items), batch_size)])
    # Two chunks in flight: decoding overlaps prediction, and memory stays two batches, however many files.
    pending: deque[list[Future]] = deque(_submit(chunk, size, pool) for chunk in itertools.islice(chunks, 2))
    while pending:
        futures = pending.popleft()
        following = next(chunks, None)
        if following is not None:
            pending.append(_submit(following, size, pool))
        yield [future.result() for future in futures]


def _submit(chunk: Sequence[Result | str], size: int, pool: ThreadPoolExecutor) -> list[Future]:
    return [pool.submit(_decode, item, size) for item in chunk]


def _decode(item: Result | str, size: int) -> Result | tuple[str, np.ndarray]:
    if isinstance(item, Result):
        return item
    try:
        return item, load_image(Path(item), size, MAX_IMAGE_PIXELS)
    except ImageError as error:
        return Result(item, error=str(error))


def _predict_chunk(classifier: Classifier, chunk: list[Result | tuple[str, np.ndarray]]) -> list[Result]:
    decoded = [entry for entry in chunk if not isinstance(entry, Result)]
    rows = iter(_probabilities(classifier, decoded) if decoded else [])
    return [
        entry
        if isinstance(entry, Result)
        else Result(entry[0], probabilities=dict(zip(classifier.classes, next(rows))))
        for entry in chunk
    ]


def _probabilities(classifier: Classifier, decoded: list[tuple[str, np.ndarray]]) -> list[list[float]]:
    """Per-class probabilities of one batch of (path, pixels), rounded to 6 decimals (float32 holds no more);
    a DataError naming the model when it answers NaN or infinity, which no probability is."""
    # One graph call per batch: model.predict() would also build a data pipeline on every call. The
    # decoded uint8 pixels go in as they are: the model's float32 input casts them inside its graph.
    images = np.stack([pixels for _, pixels in decoded])
    output = np.asarray(classifier.model.predict_on_batch(images), dtype=np.float64)
    broken = np.flatnonzero(~np.isfinite(output).all(axis=1))
    if broken.size:  # `Luffy nan%  -> (none above 50%)` is no answer: a broken model is one error, not a result
        raise DataError(
            f"{classifier.source}: the model answers NaN or infinity for {shown(decoded[broken[0]][0])}, "
            "not probabilities: it is broken (train it again)"
        )
    return np.round(output, 6).tolist()


# --- output --------------------------------------------------------------------------------------------


def format_line(result: Result, threshold: float) -> str:
    """`path: Luffy 97.1% | Nami 2.0% ...  -> Luffy`, or `path: error: reason`; names shown escaped (a
    newline in a file name would print a line of its own, one that reads as another file's)."""
    if result.error is not None:
        return f"{shown(result.path)}: error: {shown(result.error)}"
    scores = " | ".join(f"{shown(name)} {p:.1%}" for name, p in result.probabilities.items())
    chosen = ", ".join(map(shown, result.predicted(threshold))) or f"(none above {percent(threshold)})"
    return f"{shown(result.path)}: {scores}  -> {chosen}"


def to_json(source: str, threshold: float, classes: Sequence[str], results: Sequence[Result]) -> dict[str, Any]:
    """The --json document (schema in this module's docstring)."""
    return {
        "model": source,
        "threshold": threshold,
        "classes": list(classes),
        "results": [
            {"path": r.path, "probabilities": r.probabilities, "predicted": r.predicted(threshold), "top": r.top}
            for r in results
            if r.error is None
        ],
        "errors": [{"path": r.path, "error": r.error} for r in results if r.error is not None],
    }


# --- the command ---------------------------------------------------------------------------------------


def run(
    paths: Sequence[str],
    model: str | None = None,
    threshold: float = PREDICT_THRESHOLD,
    as_json: bool = False,
    report: str | None = None,
    batch_size: int = PREDICT_BATCH,
    out: TextIO | None = None,
) -> list[Result]:
    """Predict every file the paths name; print lines or JSON, write the report; DataError if any failed."""
    out = out or sys.stdout
    _check_args(threshold, batch_size)
    if report:
        check_target(Path(report), "--report")
    items, skipped = expand_inputs(paths)  # before loading the model: a typo fails in a second, not after Keras
    classifier = load_classifier(model or default_model_folder())
    results = []
    # The lines on a terminal are progress enough; into a file or as JSON a bar on stderr shows it.
    with progress.bar(len(items), "predict", shown=as_json or not _isatty(out)) as bar:
        for result in predict_items(classifier, items, batch_size):
            results.append(result)
            bar.update()
            if not as_json:
                print(format_line(result, threshold), file=out, flush=True)
    if as_json:
        json.dump(to_json(classifier.source, threshold, classifier.classes, results), out, indent=2)
        out.write("\n")
    if report:
        page = report_page(classifier.source, threshold, classifier.classes, results)
        write_whole(Path(report), page.encode("utf-8"), "--report")
    if skipped:
        print(skipped_note(skipped), file=sys.stderr)
    _raise_on_failures(results)
    return results


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _check_args(threshold: float, batch_size: int) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold: must be between 0 and 1, got {threshold}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")


def _raise_on_failures(results: Sequence[Result]) -> None:
    failed = sum(result.error is not None for result in results)
    if failed:
        raise DataError(f"{failed} of {len(results)} inputs could not be predicted (see their lines)")
