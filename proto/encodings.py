"""Activation encodings on the wire: an FP32 tensor sent as FP16, or as INT8 with one scale.

Split computing sends a block's activation over a slow link; halving or quartering
its bytes can matter more than where the cut is. The tensor still travels as a plain
Open Inference Protocol tensor whose ``datatype`` says what the bytes are (``FP16``,
``INT8``), so any protocol reader parses it; the layerserve extension marks it as an
encoded FP32 tensor with the InferInputTensor parameters

- ``layerserve_encoding``: ``"fp16"`` or ``"int8"`` (string_param);
- ``layerserve_scale``: the INT8 step (double_param), ``fp32 = int8 * scale``.

INT8 is symmetric and per tensor: ``scale = max|x| / 127`` over the whole request
tensor (every row), values rounded to the nearest step and clipped to [-127, 127];
an all-zero tensor gets scale 1. The server decodes back to FP32 in one place, the
codec's ``decode_input`` (proto/tensors.py), before the block's input is validated,
so a block never sees an encoded tensor. The decoded array is at most 4x the bytes
the message carried, so the server's message limit bounds it too.

numpy only; errors are :class:`EncodingError` (a ValueError the codec turns into
its own TensorCodecError, which the server answers with INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ENCODING_PARAMETER = "layerserve_encoding"
SCALE_PARAMETER = "layerserve_scale"

EncodingName = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class Encoding:
    """One way of sending an FP32 tensor: the datatype its bytes travel as and the bytes per element."""

    name: EncodingName
    datatype: str
    itemsize: int

    def wire_bytes(self, fp32_bytes: int) -> int:
        """Payload bytes of a tensor that holds ``fp32_bytes`` as FP32."""
        return fp32_bytes // 4 * self.itemsize


# "fp32" is the absence of an encoding: sent as it is, no parameter set.
ENCODINGS: dict[str, Encoding] = {
    "fp32": Encoding("fp32", "FP32", 4),
    "fp16": Encoding("fp16", "FP16", 2),
    "int8": Encoding("int8", "INT8", 1),
}
INT8_MAX = 127


class EncodingError(ValueError):
    """An encoding name, a parameter or a payload that does not fit the encoding."""


def encoding(name: str) -> Encoding:
    """The encoding called ``name``; EncodingError naming the known ones otherwise."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise EncodingError(f"encoding expects one of {', '.join(ENCODINGS)}, got {name[:40]!r}") from None


# What the encodings compress: FP32 tensors. Others (UINT8 pixels, a quantized model's INT8 activations)
# travel as they are under any encoding; the client, the encodings' costs and the planner all ask here.
ENCODED_DATATYPE = "FP32"


def applies_to(datatype: str) -> bool:
    """Whether an encoding changes how a tensor of ``datatype`` travels (only FP32 is encoded)."""
    return datatype == ENCODED_DATATYPE


def encode(array: np.ndarray, name: str) -> tuple[np.ndarray, float | None]:
    """``(wire array, scale)`` for an FP32 ``array``: scale is None except for int8.

    EncodingError when ``array`` is not float32 (only FP32 activations are encoded).
    """
    chosen = encoding(name)
    array = np.asarray(array)
    if array.dtype != np.float32:
        raise EncodingError(f"{chosen.name} encodes FP32 tensors, got {array.dtype}")
    if chosen.name == "fp32":
        return array, None
    if chosen.name == "fp16":
        return array.astype(np.float16), None
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if not math.isfinite(peak):
        raise EncodingError("int8 cannot encode a tensor holding inf or NaN")
    scale = peak / INT8_MAX if peak > 0 else 1.0
    quantized = np.clip(np.rint(array / np.float32(scale)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def decode(array: np.ndarray, name: str, scale: float | None) -> np.ndarray:
    """The FP32 tensor an encoded ``array`` stands for.

    EncodingError when the payload's dtype is not the encoding's, or int8 comes without
    a finite positive scale.
    """
    chosen = encoding(name)
    if chosen.name == "fp32":
        raise EncodingError("fp32 is sent without an encoding parameter; expected fp16 or int8")
    wire = np.dtype({"fp16": np.float16, "int8": np.int8}[chosen.name])
    if array.dtype != wire:
        raise EncodingError(f"{chosen.name} expects datatype {chosen.datatype}, got {array.dtype}")
    if chosen.name == "fp16":
        return array.astype(np.float32)
    if scale is None or not math.isfinite(scale) or scale <= 0:
        raise EncodingError(f"int8 expects a finite {SCALE_PARAMETER} > 0 (double), got {scale!r}")
    return array.astype(np.float32) * np.float32(scale)
