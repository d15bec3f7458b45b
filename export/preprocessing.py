"""The preprocessing recorded in a manifest: how a picture becomes the model's input.

Defaults follow what torchvision users know: for a 3-channel input of H x W,
``Resize(round(min(H, W) / 0.875))``, ``CenterCrop((H, W))``, ``ToTensor()`` and
ImageNet's ``Normalize(mean, std)``; for a 1-channel input, resize straight to the
crop, grey levels in [0, 1], no normalisation. Each can be overridden at export
time (``--resize``, ``--mean``, ``--std``), and ``layerserve compare --images``
applies what the manifest says.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerserve.proto.pictures import sample_layout
from layerserve.proto.repository_pb2 import Preprocessing
from layerserve.proto.tensors import pixel_offset

from .errors import ExportError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet evaluation transforms: Resize(256), CenterCrop(224).
CROP_FRACTION = 224 / 256


def image_layout(per_sample: Sequence[int]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of an image input's per-sample shape, channels first ``[C, H, W]`` or last ``[H, W, C]``
    (Keras through tf2onnx) with 1 or 3 channels and a fixed size (proto/pictures.py); None for anything
    else, a two-axis sample included (a grey ``[H, W]`` comes here as ``[1, H, W]``: export/imported.py)."""
    layout = sample_layout(per_sample)
    if layout is None or not layout.channel_axis:
        return None
    return layout.channels, layout.height, layout.width


def image_preprocessing(
    input_shape: Sequence[int],
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    background: str = "",
) -> Preprocessing | None:
    """Preprocessing for an input of per-sample shape ``[C, H, W]`` (or channels last, ``[H, W, C]``: Keras
    through tf2onnx); None when it is not an image.

    Raises ExportError when ``mean``/``std`` do not have one value per channel, or a std is 0.
    """
    layout = image_layout(input_shape)
    if layout is None:
        if resize is not None or mean is not None or std is not None:
            raise ExportError(f"--resize/--mean/--std describe image inputs [C,H,W] or [H,W,C] with 1 or 3 channels; "
                              f"this input is {list(input_shape)}")
        return None
    channels, height, width = layout
    grey = channels == 1
    if resize is None:
        resize = min(height, width) if grey else round(min(height, width) / CROP_FRACTION)
    mean = list(mean) if mean is not None else ([0.0] if grey else list(IMAGENET_MEAN))
    std = list(std) if std is not None else ([1.0] if grey else list(IMAGENET_STD))
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ExportError(f"--{name} needs {channels} value{'s' if channels > 1 else ''} (one per channel), got {values}")
    if any(value == 0 for value in std):
        raise ExportError(f"--std values must not be 0, got {std}")
    if 0 < resize < min(height, width) or resize < 0:
        raise ExportError(f"--resize {resize} is smaller than the {height}x{width} crop (0: straight to that size)")
    return Preprocessing(
        resize=resize, crop_height=height, crop_width=width, mean=mean, std=std,
        color="L" if grey else "RGB", background=background,
    )


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """``"0.485,0.456,0.406"`` -> floats; ExportError naming ``flag`` when it does not parse."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ExportError(f"{flag} takes comma-separated numbers like 0.485,0.456,0.406, not {text!r}") from None


def describe(preprocessing: Preprocessing, datatype: str = "FP32") -> str:
    """One line for people: ``resize 256, centre crop 224x224, RGB, mean 0.485,0.456,0.406, std ...``.
    For an integer input ``datatype`` (UINT8: an end-to-end or a TFLite int8 export), the pixel values the
    client sends instead (proto.tensors.pixel_offset): 0-255 with no mean or std, minus 128 for INT8."""
    offset = pixel_offset(datatype)
    if not preprocessing.crop_height:
        values = "in [0, 1]" if offset is None else "0-255"
        return f"none recorded (pictures are resized to the input's size, {values})"
    size = f"{preprocessing.crop_height}x{preprocessing.crop_width}"
    steps = (f"resize {preprocessing.resize}, centre crop {size}" if preprocessing.resize
             else f"resize to {size} (no crop)")
    if offset:
        return f"{steps}, {preprocessing.color}, pixel values 0-255 minus {-offset:g} (an INT8 input: no mean or std)"
    if offset is not None:
        return f"{steps}, {preprocessing.color}, pixel values 0-255 as they are (an integer input: no mean or std)"
    numbers = lambda values: ",".join(f"{value:g}" for value in values)  # noqa: E731
    return (f"{steps}, {preprocessing.color}, mean {numbers(preprocessing.mean)}, "
            f"std {numbers(preprocessing.std)}")
