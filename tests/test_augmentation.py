"""The one-resampling augmentation used outside TensorFlow: Keras's flip, rotation and zoom, same ranges."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from op_classifier.models.common.layers import RandomAffine, augmentation

SIDE = 16


def _images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, SIDE, SIDE, 3)).astype("float32")


def _apply(sign: float, angle: float, scale: float, images: np.ndarray) -> np.ndarray:
    ones = np.ones(len(images), dtype="float32")
    transform = RandomAffine.matrices(sign * ones, angle * ones, scale * ones, SIDE, SIDE)
    out = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")
    return ops.convert_to_numpy(out)


def test_draws_cover_the_ranges_of_kerass_layers() -> None:
    """rotation 0.2 is up to 72 degrees either way, zoom 0.1 is 0.9..1.1, half the images are mirrored."""
    sign, angle, scale = (ops.convert_to_numpy(v) for v in RandomAffine(True, 0.2, 0.1, seed=3).draw(4000))
    bound = 0.2 * 2 * math.pi
    assert angle.min() >= -bound and angle.max() <= bound
    assert angle.min() < -0.95 * bound and angle.max() > 0.95 * bound
    assert scale.min() >= 0.9 - 1e-6 and scale.max() <= 1.1 + 1e-6
    assert scale.min() < 0.905 and scale.max() > 1.095
    assert set(np.unique(sign)) == {-1.0, 1.0} and 0.45 < (sign < 0).mean() < 0.55
    unflipped = ops.convert_to_numpy(RandomAffine(False, 0.2, 0.1, seed=3).draw(100)[0])
    assert (unflipped == 1.0).all()


def test_geometry_is_kerass_flip_rotation_and_zoom() -> None:
    """A fixed draw resamples exactly as Keras's own layer does with that draw forced."""
    images = _images()
    np.testing.assert_allclose(_apply(-1.0, 0.0, 1.0, images), images[:, :, ::-1], atol=1e-5)
    quarter = layers.RandomRotation((0.25, 0.25))(images, training=True)
    np.testing.assert_allclose(_apply(1.0, math.pi / 2, 1.0, images), ops.convert_to_numpy(quarter), atol=1e-4)
    zoomed = layers.RandomZoom((0.1, 0.1))(images, training=True)
    np.testing.assert_allclose(_apply(1.0, 0.0, 1.1, images), ops.convert_to_numpy(zoomed), atol=1e-4)


def test_seeded_fresh_each_batch_and_idle_at_inference() -> None:
    """Same seed, same images; another seed or the next batch, other images; inference passes pixels through."""
    images = _images(4)

    def augmented(layer: RandomAffine) -> np.ndarray:
        return ops.convert_to_numpy(layer(images, training=True))

    first, again = RandomAffine(True, 0.2, 0.1, seed=5), RandomAffine(True, 0.2, 0.1, seed=5)
    batch = augmented(first)
    np.testing.assert_array_equal(batch, augmented(again))
    assert not np.allclose(batch, augmented(RandomAffine(True, 0.2, 0.1, seed=6)))
    assert not np.allclose(batch, augmented(first))
    np.testing.assert_array_equal(ops.convert_to_numpy(first(images, training=False)), images)


def test_a_saved_model_with_it_loads_back(tmp_path: Path) -> None:
    """A model trained under JAX carries the layer; loading it (here under TensorFlow) needs nothing else."""
    inputs = keras.Input((SIDE, SIDE, 3))
    model = keras.Model(inputs, layers.Dense(2)(RandomAffine(True, 0.1, 0.2, seed=7)(inputs)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
    np.testing.assert_allclose(loaded.predict(_images(), verbose=0), model.predict(_images(), verbose=0), atol=1e-6)


def test_no_augmentation_adds_no_layer() -> None:
    """Every range off: the model holds no augmentation layer at all."""
    inputs = keras.Input((SIDE, SIDE, 3))
    assert augmentation(inputs, flip=False, rotation=0.0, zoom=0.0, seed=1) is inputs
