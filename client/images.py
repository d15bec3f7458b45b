"""Loading inputs from files: ``.npy`` / ``.npz`` arrays, PNG/JPEG images, and image folders.

Contract of :func:`load_input`: the result is a C-contiguous array of the
model input's dtype with a batch dimension, ``[N, *spec.shape[1:]]``; for an input
that is one picture with no batch axis (proto/pictures.py), that picture as it is.

* ``.npy``: the array as stored; one sample without its batch axis gets one.
* ``.npz``: its ``images`` array (a layerserve samples file), else its only array.
* images: what the manifest's ``preprocessing`` says (torchvision's evaluation
  transforms: resize the shorter side, centre-crop, scale to [0, 1], normalise
  per channel; a "dark"-background model gets a mostly light picture inverted).
  Without one (a server that does not say): resized to the input's size, [0, 1].
  A channels-last input ([N, H, W, C], Keras's layout) gets the picture in that
  layout, a grey one without a channel axis ([N, H, W]) its grey levels; an integer
  input (UINT8: an end-to-end export that normalises inside its graph) gets the pixel
  values 0-255 themselves, an INT8 one (a full-integer TFLite model) those values
  minus 128.

:func:`read_image_folder` reads torchvision's ImageFolder layout (one subfolder per
class, pictures inside) into images and labels.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from layerserve.proto import tensors
from layerserve.proto.pictures import PictureLayout, input_layout
from layerserve.proto.repository_pb2 import Preprocessing

from .api import TensorSpec

ARRAY_SUFFIXES = (".npy", ".npz")
# What Pillow reads that people keep pictures in (torchvision's IMG_EXTENSIONS, the common ones).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def read_samples(path: Path, limit: int | None = None, labels_required: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """A labelled samples file (``numpy.savez(path, images=..., labels=...)``, what ``layerserve export``
    writes beside a model) as ``(images, labels)``, the first ``limit`` of each, the images in the type they
    were stored in. ``labels`` is None when the file has none and ``labels_required`` is False.

    Raises FileNotFoundError or ValueError, each one line naming the file and what it should hold.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--samples {path}: {'not a file' if path.exists() else 'no such file'}")
    expected = "a .npz archive of 'images' and 'labels' arrays (numpy.savez)"
    try:
        archive = np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"--samples {path} is not {expected} ({type(error).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"--samples {path} holds one array, not {expected}")
    with archive:
        wanted = ("images", "labels") if labels_required else ("images",)
        if any(key not in archive.files for key in wanted):
            raise ValueError(f"--samples {path} holds {archive.files[:8]}; expected {expected}")
        images = archive["images"][:limit] if limit else archive["images"]
        labels = None if "labels" not in archive.files else (
            archive["labels"][:limit] if limit else archive["labels"])
    return images, labels


def picture_layout(spec: TensorSpec) -> PictureLayout:
    """Where a picture goes in input ``spec`` (proto/pictures.py): ``[N, C, H, W]``, ``[N, H, W, C]``, a grey
    ``[N, H, W]``, or one picture with no batch axis (``[C, H, W]``, ``[H, W, C]``); ValueError (one line) for
    anything else."""
    layout = input_layout(spec.shape)
    if layout is None:
        raise ValueError(f"pictures need an image input [N,C,H,W] or [N,H,W,C] with 1 or 3 channels (or grey "
                         f"[N,H,W], or one picture [C,H,W] or [H,W,C]) and a fixed size; input {spec.name!r} is {spec}")
    return layout


def image_shape(spec: TensorSpec) -> tuple[int, int, int]:
    """``(C, H, W)`` of a picture for input ``spec`` (:func:`picture_layout`)."""
    layout = picture_layout(spec)
    return layout.channels, layout.height, layout.width


def default_preprocessing(spec: TensorSpec) -> Preprocessing:
    """For servers whose manifest says nothing: resize straight to the input's size, [0, 1], no normalisation."""
    channels, height, width = image_shape(spec)
    return Preprocessing(resize=0, crop_height=height, crop_width=width, mean=[0.0] * channels,
                         std=[1.0] * channels, color="L" if channels == 1 else "RGB")


def preprocess(path: Path, spec: TensorSpec, preprocessing: Preprocessing | None = None,
               invert: bool | None = None) -> np.ndarray:
    """One picture as a sample of the input (``[C, H, W]``; ``[H, W, C]`` channels last; ``[H, W]`` grey without
    a channel axis) of the input's dtype, by ``preprocessing`` (module docstring).

    ``invert`` overrides the background rule (True/False); raises PIL's UnidentifiedImageError
    for a file that is not a picture.
    """
    from PIL import Image, ImageOps

    layout = picture_layout(spec)
    channels, height, width = layout.channels, layout.height, layout.width
    steps = preprocessing if preprocessing is not None and preprocessing.crop_height else default_preprocessing(spec)
    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened).convert("L" if channels == 1 else "RGB")
        if steps.resize:
            scale = steps.resize / min(picture.size)
            size = (max(steps.crop_width, round(picture.width * scale)), max(steps.crop_height, round(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (picture.width - width) // 2, (picture.height - height) // 2
            picture = picture.crop((left, top, left + width, top + height))
        else:
            picture = picture.resize((width, height), Image.Resampling.BOX)
    pixels = np.asarray(picture, dtype=np.float32) / 255.0
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if invert is None:
        invert = steps.background == "dark" and float(pixels.mean()) > 0.5
    if invert:
        pixels = 1.0 - pixels
    dtype = tensors.numpy_dtype(spec.datatype)
    offset = tensors.pixel_offset(spec.datatype)
    if offset is not None:  # pixels for a graph that normalises them itself; INT8 ones shifted, not wrapped
        values = np.rint(pixels * 255.0) + offset
    else:
        mean = np.asarray(list(steps.mean) or [0.0] * channels, np.float32).reshape(-1, 1, 1)
        std = np.asarray(list(steps.std) or [1.0] * channels, np.float32).reshape(-1, 1, 1)
        values = (pixels - mean) / std
    return np.ascontiguousarray(layout.arrange(values), dtype=dtype)


def load_image(path: Path, spec: TensorSpec, invert: bool | None = None,
               preprocessing: Preprocessing | None = None) -> np.ndarray:
    """A PNG/JPEG (anything Pillow opens) as one request's input: ``[1, C, H, W]`` (``[1, H, W, C]`` for a
    channels-last ``spec``, ``[1, H, W]`` for a grey one without a channel axis), or the picture alone for an
    input with no batch axis."""
    picture = preprocess(path, spec, preprocessing, invert)
    return picture[None] if picture_layout(spec).batched else picture


def load_input(path: Path, spec: TensorSpec, invert: bool | None = None,
               preprocessing: Preprocessing | None = None) -> np.ndarray:
    """Read ``path`` as input for a tensor described by ``spec`` (see the module contract).

    Raises FileNotFoundError, ValueError for an unusable file, and PIL's
    UnidentifiedImageError for an unreadable picture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        return load_image(path, spec, invert, preprocessing)
    array = load_array(path)
    if array.ndim == len(spec.shape) - 1:
        array = array[None]
    return np.ascontiguousarray(array, dtype=tensors.numpy_dtype(spec.datatype))


def read_image_folder(
    root: Path,
    spec: TensorSpec,
    preprocessing: Preprocessing | None = None,
    class_names: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pictures in ``root/<class>/*`` as ``(images [N, *sample], labels [N], class folder names)``, each picture
    laid out as one sample of ``spec`` (:func:`preprocess`).

    Labels follow the model's ``class_names`` when every folder is one of them (by
    name), else torchvision's ImageFolder rule: the sorted folder names, indexed from 0.
    ``limit`` keeps the first N pictures of the sorted listing. Raises ValueError (one line)
    for a folder without class subfolders or pictures.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--images {root} is not a folder of class subfolders (the ImageFolder layout)")
    classes = sorted(child.name for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise ValueError(f"--images {root} has no class subfolders; expected {root}/<class>/<picture>.png")
    by_name = {name: index for index, name in enumerate(class_names)}
    index_of = (
        {name: by_name[name] for name in classes}
        if class_names and all(name in by_name for name in classes)
        else {name: index for index, name in enumerate(classes)}
    )
    files = [
        (path, index_of[name])
        for name in classes
        for path in sorted((root / name).iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise ValueError(f"--images {root}: no pictures ({', '.join(IMAGE_SUFFIXES)}) in its class subfolders")
    files = files[:limit] if limit else files
    images = np.stack([preprocess(path, spec, preprocessing) for path, _ in files])
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    return images, labels, classes
