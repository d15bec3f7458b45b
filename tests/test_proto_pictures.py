"""proto/pictures.py: the one reading of an input's shape that split's preprocessing and the client's
pictures share."""

from __future__ import annotations

import numpy as np
import pytest

from layerserve.proto.pictures import PictureLayout, input_layout, sample_layout, sample_shape


@pytest.mark.parametrize(("shape", "expected"), [
    ((-1, 3, 224, 224), PictureLayout(3, 224, 224)),
    ((1, 3, 224, 224), PictureLayout(3, 224, 224)),
    ((-1, 224, 224, 3), PictureLayout(3, 224, 224, channels_last=True)),
    ((-1, 28, 28, 1), PictureLayout(1, 28, 28, channels_last=True)),
    ((-1, 28, 28), PictureLayout(1, 28, 28, channel_axis=False)),  # grey, the model adds the channel axis
    ((8, 28, 28), PictureLayout(1, 28, 28, channel_axis=False)),  # a fixed batch of 8 grey pictures
    ((224, 224, 3), PictureLayout(3, 224, 224, channels_last=True, batched=False)),  # one picture, no batch
    ((3, 64, 48), PictureLayout(3, 64, 48, batched=False)),
    ((1, 28, 28), PictureLayout(1, 28, 28, channel_axis=False)),  # one grey picture: the same bytes either way
])
def test_input_layouts(shape: tuple[int, ...], expected: PictureLayout) -> None:
    assert input_layout(shape) == expected


@pytest.mark.parametrize("shape", [(-1, 784), (784,), (-1, 3, -1, -1), (-1, 5, 64, 64), (3, -1, 224), ()])
def test_shapes_that_hold_no_picture(shape: tuple[int, ...]) -> None:
    assert input_layout(shape) is None


def test_arrange_lays_a_chw_picture_out_as_one_sample() -> None:
    chw = np.arange(3 * 4, dtype=np.float32).reshape(1, 3, 4)
    assert sample_layout((3, 4)).arrange(chw).shape == (3, 4)
    rgb = np.arange(3 * 2 * 5, dtype=np.float32).reshape(3, 2, 5)
    hwc = sample_layout((2, 5, 3)).arrange(rgb)
    assert hwc.shape == (2, 5, 3) and hwc[1, 4, 2] == rgb[2, 1, 4]
    assert sample_layout((3, 2, 5)).arrange(rgb) is rgb
    assert PictureLayout(3, 2, 5, channels_last=True).sample_shape == (2, 5, 3)


def test_sample_shapes() -> None:
    assert sample_shape((32, 32, 3)) == (32, 32, 3)  # one picture, no batch axis
    assert sample_shape((-1, 3, 32, 32)) == (3, 32, 32)
    assert sample_shape((1, 16)) == (16,)
    assert sample_shape((1, 8, 8)) == (8, 8)
