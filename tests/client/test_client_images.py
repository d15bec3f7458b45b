"""Pictures as model inputs (client/images.py), no server: channels-first and channels-last layouts,
FP32 normalised as the manifest says and integer pixels as they are."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerserve.client.api import TensorSpec
from layerserve.client.images import image_shape, load_image, read_samples
from layerserve.proto.repository_pb2 import Preprocessing


@pytest.fixture()
def picture(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


def _resized(path: Path) -> np.ndarray:
    """What the default preprocessing starts from: the picture box-resized to 32x32, [H, W, 3] uint8."""
    return np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BOX))


def test_a_channels_last_input_gets_the_same_picture_transposed(picture: Path) -> None:
    first = load_image(picture, TensorSpec("x", "FP32", (-1, 3, 32, 32)))
    last = load_image(picture, TensorSpec("input_1", "FP32", (-1, 32, 32, 3)))
    assert first.shape == (1, 3, 32, 32) and last.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(last[0], first[0].transpose(1, 2, 0))
    np.testing.assert_allclose(first[0], _resized(picture).transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_integer_pixels_are_the_picture_itself_whatever_the_manifest_normalises(picture: Path) -> None:
    imagenet = Preprocessing(resize=0, crop_height=32, crop_width=32, mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225], color="RGB")
    last = load_image(picture, TensorSpec("image_bytes", "UINT8", (-1, 32, 32, 3)), preprocessing=imagenet)
    assert last.dtype == np.uint8
    np.testing.assert_array_equal(last[0], _resized(picture))
    first = load_image(picture, TensorSpec("pixels", "UINT8", (-1, 3, 32, 32)))
    np.testing.assert_array_equal(first[0], _resized(picture).transpose(2, 0, 1))


def test_int8_pixels_are_the_picture_shifted_by_128_not_wrapped(picture: Path) -> None:
    """A full-integer TFLite model (through tf2onnx) takes INT8 pixels: its input quantization is scale 1/255,
    zero point -128, so pixel p goes in as p - 128. Cast as they were, pixels over 127 wrapped (200 -> -56)."""
    got = load_image(picture, TensorSpec("serving_default_input_1:0", "INT8", (-1, 32, 32, 3)))
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got[0].astype(np.int16), _resized(picture).astype(np.int16) - 128)


def test_shapes_that_are_not_pictures_are_refused_in_one_line() -> None:
    assert image_shape(TensorSpec("x", "FP32", (-1, 1, 28, 28))) == (1, 28, 28)
    assert image_shape(TensorSpec("x", "FP32", (-1, 28, 28, 1))) == (1, 28, 28)
    for shape in ((-1, 8, 16, 16), (-1, 3, -1, -1), (-1, 100)):
        with pytest.raises(ValueError, match=r"^pictures need an image input \[N,C,H,W\] or \[N,H,W,C\]"):
            image_shape(TensorSpec("x", "FP32", shape))


def test_samples_keep_their_type_and_a_bad_file_is_named_in_one_line(tmp_path: Path) -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "pixels.npz", images=pixels, labels=np.array([3, 5]))
    images, labels = read_samples(tmp_path / "pixels.npz", limit=1)
    assert images.dtype == np.uint8 and images.shape == (1, 4, 4, 3) and labels.tolist() == [3]
    np.savez(tmp_path / "unlabelled.npz", images=pixels)
    assert read_samples(tmp_path / "unlabelled.npz", labels_required=False)[1] is None
    (tmp_path / "empty.npz").touch()
    (tmp_path / "notes.txt").write_text("not an archive")
    np.save(tmp_path / "one.npy", pixels)
    for name, expected in (("unlabelled.npz", "holds ['images']; expected"), ("empty.npz", "is not a .npz archive"),
                           ("notes.txt", "is not a .npz archive"), ("one.npy", "holds one array, not a .npz archive")):
        with pytest.raises(ValueError, match=r"^--samples .*" + re.escape(expected)):
            read_samples(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="absent.npz: no such file"):
        read_samples(tmp_path / "absent.npz")
