"""images.load_image on its own: the conversions prepare and predict share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from op_classifier.data.images import ImageError, load_image


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    assert (load_image(path, 8, 10_000) == 128).all()


def test_32_bit_int_holding_16_bit_data_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert (load_image(path, 8, 10_000) == 255).all()


def test_output_is_square_uint8_rgb_ignoring_aspect(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (90, 10), (1, 2, 3)).save(path)
    pixels = load_image(path, 16, 10_000)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8 and (pixels == (1, 2, 3)).all()


def test_large_jpeg_decodes_at_reduced_scale_without_losing_content(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    image = Image.new("RGB", (1600, 1200), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 800, 1200))
    image.save(path, quality=95)
    pixels = load_image(path, 32, 10**8).astype(int)
    assert np.abs(pixels[16, 4] - (255, 0, 0)).max() < 10 and np.abs(pixels[16, 28] - (0, 0, 255)).max() < 10


def test_limit_does_not_touch_pillows_global(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="too large"):
        load_image(path, 8, 9_999)
    assert Image.MAX_IMAGE_PIXELS == before and load_image(path, 8, 10_000).shape == (8, 8, 3)


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "nope.jpg", 8, 10_000)
