"""Streaming input: row files, the per-epoch shuffled PyDataset, uint8 into the model, precision policy."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from op_classifier.data import arrays
from op_classifier.data.stream import ImageStream
from op_classifier.errors import DataError
from op_classifier.models.seed_cnn import build_model
from op_classifier.training.device import precision_policy


def _images(n: int, size: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _saved(tmp_path: Path, images: np.ndarray) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path


def test_row_file_reads_any_rows_as_numpy_does(tmp_path: Path) -> None:
    images = _images(20)
    path = _saved(tmp_path, images)
    with arrays.RowFile(path) as rows:
        assert len(rows) == 20 and rows.shape == images.shape
        for wanted in ([0], [19], [3, 4, 5, 9, 10, 2], list(range(20)), []):
            np.testing.assert_array_equal(rows.read(wanted), images[wanted])
        with pytest.raises(IndexError):
            rows.read([20])


def test_row_file_writes_rows_into_a_created_array(tmp_path: Path) -> None:
    images = _images(7)
    path = tmp_path / "made.npy"
    arrays.create(path, images.shape)
    with arrays.RowFile(path, writable=True) as rows:
        rows.write(0, images[:3])
        rows.write(3, images[3:])
        with pytest.raises(ValueError):
            rows.write(6, images[:2])  # past the end
    np.testing.assert_array_equal(np.load(path), images)


def test_a_truncated_array_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    path = _saved(tmp_path, _images(10))
    path.write_bytes(path.read_bytes()[:-100])
    with arrays.RowFile(path) as rows, pytest.raises(DataError, match="images.npy: truncated"):
        rows.read([9])
    path.write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a readable .npy array"):
        arrays.RowFile(path)


def test_stream_visits_every_row_once_per_epoch_in_a_seeded_order(tmp_path: Path) -> None:
    images = _images(23)
    labels = np.eye(23, dtype=np.float32)  # row i's label names i: checks images and labels stay paired
    path = _saved(tmp_path, images)

    def epochs(stream: ImageStream, count: int) -> list[list[int]]:
        seen = []
        for _ in range(count):
            order = []
            for i in range(len(stream)):
                x, y = stream[i]
                assert x.dtype == np.uint8 and len(x) <= 5
                rows = y.argmax(axis=1)
                np.testing.assert_array_equal(x, images[rows])
                order.extend(rows.tolist())
            stream.on_epoch_end()
            seen.append(order)
        return seen

    first = epochs(ImageStream(path, labels, batch_size=5, seed=7, workers=1), 3)
    assert all(sorted(order) == list(range(23)) for order in first)
    assert first[0] != first[1] != first[2]  # a new order each epoch
    assert epochs(ImageStream(path, labels, batch_size=5, seed=7, workers=1), 3) == first  # reproducible
    assert epochs(ImageStream(path, labels, batch_size=5, seed=8, workers=1), 1)[0] != first[0]
    plain = ImageStream(path, None, batch_size=10)
    assert len(plain) == 3 and len(plain[0]) == 1  # images only, in file order
    np.testing.assert_array_equal(np.concatenate([plain[i][0] for i in range(3)]), images)


def test_stream_refuses_labels_that_do_not_match_the_images(tmp_path: Path) -> None:
    path = _saved(tmp_path, _images(5))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        ImageStream(path, np.zeros((4, 2), np.float32), batch_size=2)


def test_uint8_batches_give_the_float_pixels_probabilities() -> None:
    """The stream sends uint8; the model's float32 input casts inside it, so serving float 0..255 is unchanged."""
    model = build_model(4, 16, filters=(4,), units=8, seed=1)
    assert model.inputs[0].dtype == "float32"
    images = _images(3, size=16)
    as_uint8 = np.asarray(model.predict_on_batch(images))
    as_float = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    np.testing.assert_allclose(as_uint8, as_float, atol=1e-6)


def test_fit_on_a_stream_trains_reproducibly(tmp_path: Path) -> None:
    """Two identical trainings on the shuffled stream (2 workers) end with bit-identical weights."""
    images, labels = _images(24, size=16), np.eye(4, dtype=np.float32)[np.arange(24) % 4]
    path = _saved(tmp_path, images)

    def trained() -> list[np.ndarray]:
        keras.utils.set_random_seed(3)
        model = build_model(4, 16, filters=(4,), units=8, seed=3)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.fit(ImageStream(path, labels, batch_size=8, seed=3, workers=2), epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    for first, second in zip(trained(), trained()):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("setting", "gpu", "policy"),
    [
        ("auto", True, "mixed_float16"),
        ("auto", False, "float32"),  # bfloat16 measured slower and no better on CPUs (docs/decisions.md)
        ("on", True, "mixed_float16"),
        ("on", False, "mixed_bfloat16"),
        ("off", True, "float32"),
        ("off", False, "float32"),
    ],
)
def test_precision_policy(setting: str, gpu: bool, policy: str) -> None:
    assert precision_policy(setting, gpu=gpu) == policy
