"""How a picture fills an image input: the one reading of an input's shape that split's preprocessing and
the client's pictures share.

One sample of an image input is ``[C, H, W]`` (PyTorch), ``[H, W, C]`` (Keras, TFLite and Flax: channels
last) or ``[H, W]``: a grey picture without a channel axis, as an MNIST model takes it that adds the axis
itself (``x.unsqueeze(1)``, Keras' ``Reshape``). Channels are 1 or 3. Samples come after a batch axis,
except where a graph takes one picture and adds its own batch (``img.permute(2, 0, 1).unsqueeze(0)`` in a
``forward``): a fixed ``[C, H, W]`` or ``[H, W, C]`` input, whose requests each hold one picture as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHANNEL_COUNTS = (1, 3)


@dataclass(frozen=True)
class PictureLayout:
    """Where a picture's channels, height and width go in one sample of an input, and whether requests
    carry a batch axis before the samples."""

    channels: int
    height: int
    width: int
    channels_last: bool = False  # [H, W, C]
    channel_axis: bool = True  # False: a grey [H, W]
    batched: bool = True  # False: the input is one picture, with no batch axis

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One picture's shape in this layout."""
        if not self.channel_axis:
            return (self.height, self.width)
        if self.channels_last:
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    def arrange(self, chw: np.ndarray) -> np.ndarray:
        """One picture ``[C, H, W]`` laid out as a sample of this input (no batch axis added)."""
        if not self.channel_axis:
            return chw[0]
        return chw.transpose(1, 2, 0) if self.channels_last else chw


def sample_layout(sample: Sequence[int]) -> PictureLayout | None:
    """The layout of one sample's shape: ``[C, H, W]``, ``[H, W, C]`` (channels last, and not first) or a grey
    ``[H, W]``, every dimension fixed; None for anything else."""
    shape = [int(d) for d in sample]
    if not shape or min(shape) <= 0:
        return None
    if len(shape) == 2:
        return PictureLayout(1, shape[0], shape[1], channel_axis=False)
    if len(shape) != 3:
        return None
    if shape[2] in CHANNEL_COUNTS and shape[0] not in CHANNEL_COUNTS:
        return PictureLayout(shape[2], shape[0], shape[1], channels_last=True)
    if shape[0] in CHANNEL_COUNTS:
        return PictureLayout(shape[0], shape[1], shape[2])
    return None


def input_layout(shape: Sequence[int]) -> PictureLayout | None:
    """The layout of a whole input's shape (-1 for a free dimension): a fixed three-axis shape that reads as
    one picture with channels, ``[3, 224, 224]`` or ``[224, 224, 3]``, is a picture with no batch axis;
    otherwise the first axis is the batch and the rest one sample (``[N, 3, 224, 224]``, ``[N, 28, 28]``,
    and ``[1, 28, 28]``, which holds the same bytes read either way). None when no picture fits."""
    dims = [int(d) for d in shape]
    if len(dims) == 3 and min(dims) > 1:
        whole = sample_layout(dims)
        if whole is not None:
            return PictureLayout(whole.channels, whole.height, whole.width, whole.channels_last, batched=False)
    return sample_layout(dims[1:]) if len(dims) >= 3 else None


def sample_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """One sample's shape in an input of ``shape``: the whole of a picture with no batch axis
    (:func:`input_layout`), else what follows the batch axis."""
    layout = input_layout(shape)
    return tuple(int(d) for d in shape) if layout is not None and not layout.batched else tuple(shape[1:])
