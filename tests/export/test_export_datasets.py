"""The digits split is fixed by its seed, stratified, and upsampled exactly."""

from __future__ import annotations

import numpy as np

from layerserve.export.datasets import digits_split, upsample


def test_split_is_fixed_and_stratified() -> None:
    first, second = digits_split(seed=0), digits_split(seed=0)
    assert np.array_equal(first.heldout_labels, second.heldout_labels)
    assert np.array_equal(first.heldout_images, second.heldout_images)
    assert len(first.heldout_labels) + len(first.train_labels) == 1797
    assert len(first.heldout_labels) >= 0.2 * 1797
    counts = np.bincount(first.heldout_labels, minlength=10)
    assert counts.min() >= 40, counts
    assert first.train_images.shape[1:] == (1, 32, 32) and first.train_images.dtype == np.float32
    assert first.train_labels.dtype == np.int64
    assert not np.array_equal(digits_split(seed=1).heldout_labels, first.heldout_labels)


def test_upsampling_repeats_each_pixel_four_by_four() -> None:
    image = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
    big = upsample(image)
    assert big.shape == (1, 1, 32, 32)
    assert np.array_equal(big[0, 0, ::4, ::4], image.reshape(8, 8) / 16)
    assert np.array_equal(big[0, 0, 3::4, 3::4], image.reshape(8, 8) / 16)
    assert big.max() <= 1.0
