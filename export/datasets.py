"""The built-in training data: scikit-learn's handwritten digits, upsampled to 1x32x32.

``load_digits`` ships with scikit-learn (1,797 real 8x8 scans, 16 grey levels), so
training needs no network. Contract of :func:`digits_split`:

* images are float32 ``[N, 1, 32, 32]`` in ``[0, 1]`` (grey level / 16, each
  pixel repeated 4x4: nearest-neighbour upsampling, exactly invertible);
* labels are int64 ``[N]`` in ``0..9``;
* the held-out split is stratified and fixed by ``seed`` (same seed, same split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
UPSAMPLE = IMAGE_SIZE // 8
CLASS_NAMES = tuple(str(digit) for digit in range(10))
DATASET_DESCRIPTION = (
    "sklearn.datasets.load_digits (1,797 handwritten digits, 8x8, 16 grey levels), "
    "scaled to [0,1] and upsampled 4x nearest-neighbour to 1x32x32"
)


@dataclass(frozen=True)
class Split:
    """A fixed train/held-out split of the digits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    heldout_fraction: float
    seed: int


def upsample(images8: np.ndarray) -> np.ndarray:
    """``[N, 64]`` or ``[N, 8, 8]`` grey levels 0..16 -> float32 ``[N, 1, 32, 32]`` in [0, 1]."""
    images = np.asarray(images8, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    return np.ascontiguousarray(images.repeat(UPSAMPLE, axis=2).repeat(UPSAMPLE, axis=3))


def digits_split(heldout_fraction: float = 0.25, seed: int = 0) -> Split:
    """Load the digits and split them, stratified by label, reproducibly for ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = upsample(digits.data)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=heldout_fraction, random_state=seed, stratify=labels
    )
    return Split(
        train_images=np.ascontiguousarray(train_x),
        train_labels=np.ascontiguousarray(train_y),
        heldout_images=np.ascontiguousarray(test_x),
        heldout_labels=np.ascontiguousarray(test_y),
        heldout_fraction=heldout_fraction,
        seed=seed,
    )
