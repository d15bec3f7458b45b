"""Fit adapters and placement maps: pure functions, checked on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from layerserve.client.fit import FITS, fit, per_sample
from layerserve.client.placement import Placement, PlacementError, Segment


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).random((n, 1, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("method", FITS)
@pytest.mark.parametrize("shape", [(64, 4, 4), (128, 2, 2), (16, 16, 16), (512,)])
def test_every_adapter_reaches_the_target_shape(method: str, shape: tuple[int, ...]) -> None:
    out = fit(_images(), shape, method)
    assert out.shape == (3, *shape) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("method", FITS)
def test_matching_shapes_pass_through_unchanged(method: str) -> None:
    x = _images()
    assert fit(x, (1, 32, 32), method) is x


def test_resize_averages_areas_and_tiles_channels() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = fit(x, (3, 2, 2), "resize")
    assert np.allclose(out[0, 0], [[2.5, 4.5], [10.5, 12.5]])  # means of the 2x2 quadrants
    assert np.array_equal(out[0, 0], out[0, 2])
    up = fit(np.ones((1, 2, 3, 3), np.float32) * np.array([1, 5], np.float32)[None, :, None, None], (3, 6, 6), "resize")
    assert np.allclose(up[0, 0], 1) and np.allclose(up[0, 1], 5) and np.allclose(up[0, 2], 1)


def test_channels_last_pictures_and_activations_keep_their_channels() -> None:
    """A Keras-layout picture [N, H, W, 3] is resized as a picture, into a channels-first block input
    [C, h, w] or a channels-last one [h, w, C]; it was once read as 224 channels of 224x3 pixels."""
    colours = np.array([0.0, 0.5, 1.0], np.float32)
    picture = np.broadcast_to(colours, (2, 224, 224, 3)).copy()  # each channel one flat colour
    first = fit(picture, (6, 7, 7), "resize")
    assert first.shape == (2, 6, 7, 7)
    assert np.allclose(first[:, :, 3, 3], np.tile(colours, 2))  # channel c reads colour c mod 3
    last = fit(picture, (7, 7, 1280), "resize")
    assert last.shape == (2, 7, 7, 1280)
    assert np.allclose(last[0, 3, 3, :6], np.tile(colours, 2))
    padded = fit(picture, (5, 230, 230), "pad")  # channels centred like every other dimension
    assert np.allclose(padded[0, 1:4, 115, 115], colours) and np.allclose(padded[0, [0, 4], 115, 115], 0)
    # pooled channels-first vectors [C, 1, 1] stay channels-first
    pooled = np.random.default_rng(0).random((2, 1280, 1, 1), dtype=np.float32)
    assert np.allclose(fit(pooled, (1280, 2, 2), "resize")[:, :, 0, 0], pooled[:, :, 0, 0])


def test_pad_centres_or_crops_with_zeros() -> None:
    x = np.ones((2, 1, 2, 2), np.float32)
    out = fit(x, (2, 4, 4), "pad")
    assert out[:, 0, 1:3, 1:3].sum() == 8 and out.sum() == 8  # image in channel 0, centred; the rest zero
    crop = fit(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), (1, 2, 2), "pad")
    assert np.array_equal(crop[0, 0], [[5, 6], [9, 10]])


def test_project_is_seeded_and_keeps_the_norm_roughly() -> None:
    x = _images(8)
    a, b, c = fit(x, (64, 4, 4), "project", 0), fit(x, (64, 4, 4), "project", 0), fit(x, (64, 4, 4), "project", 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    ratio = np.linalg.norm(a.reshape(8, -1), axis=1) / np.linalg.norm(x.reshape(8, -1), axis=1)
    assert 0.7 < ratio.mean() < 1.3


def test_unknown_fit_and_symbolic_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fit"):
        fit(_images(), (1, 2, 2), "stretch")
    assert per_sample((-1, 64, 4, 4)) == (64, 4, 4)
    with pytest.raises(ValueError, match="dynamic"):
        per_sample((-1, -1, 4, 4))


def test_placement_parses_ranges_and_segments() -> None:
    placement = Placement.parse("0-2=edge:8001, 3-4=gpu:9001")
    assert placement.address_for(2, "d") == "edge:8001" and placement.address_for(3, "d") == "gpu:9001"
    assert placement.address_for(7, "d") == "d"
    assert placement.segments(1, 5, "d") == [Segment(1, 3, "edge:8001"), Segment(3, 5, "gpu:9001")]
    assert Placement.parse(str(placement)) == placement
    assert Placement.parse("4=h:1").segments(2, 6, "d") == [Segment(2, 4, "d"), Segment(4, 5, "h:1"), Segment(5, 6, "d")]


@pytest.mark.parametrize("text", ["0-2", "a-b=h:1", "3-1=h:1", "0-2=h:1,2-3=g:1", "=h:1", "1="])
def test_placement_refuses_malformed_maps(text: str) -> None:
    with pytest.raises(PlacementError):
        Placement.parse(text)


def test_a_fit_into_an_integer_input_is_rounded_and_clipped_into_its_range() -> None:
    """A quantized block takes INT8: the forced tensor is forced into that type too, never wrapped around."""
    x = np.array([[[[-300.4, -1.6, 0.4, 2.5, 126.6, 999.0]]]], dtype=np.float32)
    fitted = fit(x, (1, 1, 6), "pad", dtype=np.int8)
    assert fitted.dtype == np.int8
    assert fitted.reshape(-1).tolist() == [-128, -2, 0, 2, 127, 127]
    assert fit(x, (1, 1, 6), "pad").dtype == np.float32
    assert fit(x, (1, 2, 3), "resize", dtype=np.uint8).min() == 0
