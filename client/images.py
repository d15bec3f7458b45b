"""Loading inputs from files: ``.npy`` / ``.npz`` arrays, or PNG/JPEG images through Pillow.

Contract of :func:`load_input`: the result is a C-contiguous array of the
model input's dtype with a batch dimension, ``[N, *spec.shape[1:]]``.

* ``.npy``: the array as stored; one sample without its batch axis gets one.
* ``.npz``: its ``images`` array (a layerserve samples file), else its only array.
* images: converted to grey (one channel) or RGB (three), resized to the
  input's height and width with box filtering, scaled to [0, 1] (the built-in
  digits' range). The digits are bright ink on black, so a picture that is
  mostly light (dark ink on paper) is inverted unless ``invert`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layerserve.proto import tensors

from .api import TensorSpec

ARRAY_SUFFIXES = (".npy", ".npz")


def load_array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` or ``.npz`` file (ValueError for an ambiguous ``.npz``)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if "images" in archive:
                return archive["images"]
            if len(archive.files) == 1:
                return archive[archive.files[0]]
            raise ValueError(f"{path} holds {archive.files}; expected an 'images' array or a single array")
    return np.load(path, allow_pickle=False)


def load_image(path: Path, spec: TensorSpec, invert: bool | None = None) -> np.ndarray:
    """A PNG/JPEG (anything Pillow opens) as ``[1, C, H, W]`` in [0, 1] for an NCHW ``spec``."""
    from PIL import Image, ImageOps

    if len(spec.shape) != 4 or spec.shape[1] not in (1, 3) or min(spec.shape[2:]) <= 0:
        raise ValueError(f"an image file needs an NCHW input with 1 or 3 channels, not {spec}")
    channels, height, width = spec.shape[1:]
    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened).convert("L" if channels == 1 else "RGB")
        picture = picture.resize((width, height), Image.Resampling.BOX)
    pixels = np.asarray(picture, dtype=np.float32) / 255.0
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if invert is None:
        invert = float(pixels.mean()) > 0.5
    if invert:
        pixels = 1.0 - pixels
    return np.ascontiguousarray(pixels[None], dtype=tensors.numpy_dtype(spec.datatype))


def load_input(path: Path, spec: TensorSpec, invert: bool | None = None) -> np.ndarray:
    """Read ``path`` as input for a tensor described by ``spec`` (see the module contract).

    Raises FileNotFoundError, ValueError for an unusable file, and PIL's
    UnidentifiedImageError for an unreadable picture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        return load_image(path, spec, invert)
    array = load_array(path)
    if array.ndim == len(spec.shape) - 1:
        array = array[None]
    return np.ascontiguousarray(array, dtype=tensors.numpy_dtype(spec.datatype))
