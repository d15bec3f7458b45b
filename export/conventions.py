"""What a graph's exporter tells about its pictures and classes, where the graph says who exported it.

The manifest's default preprocessing is torchvision's (export/preprocessing.py). Two families of
graphs users bring are made otherwise, and say so in the file:

* **Ultralytics** (``model.export(format="onnx")``) writes metadata: ``author: Ultralytics``,
  ``imgsz``, ``task``, and ``names``, its classes as ``{0: 'person', 1: 'bicycle', ...}``.
  Its models take RGB in [0, 1] with no mean or std; a classifier's pictures are resized on
  their shorter side to the input and centre-cropped (its ``classify_transforms``). A detector
  letterboxes instead, which the manifest cannot say: the same resize and crop is recorded, and
  noted. The names become the model's labels.
* A graph that scales its own input by 1/255 or so before anything else (a Keras ``Rescaling``
  layer, ``x / 255`` at the top of ``forward``) takes 0-255 values: recorded as std 1/255.
* **tf2onnx** (Keras) writes no metadata, and each Keras application scales its pictures its own
  way ([-1, 1] for MobileNetV2, 0-255 for EfficientNet, caffe's BGR for ResNet50). No
  normalisation is assumed, whichever layout the export chose (``--inputs-as-nchw`` or not):
  pictures are resized to the input in [0, 1] as Keras' ``load_img(target_size=...)`` does (no crop),
  and ``--mean``/``--std`` name the model's. A tf2onnx graph taking integer pixels (a TFLite int8
  model through ``tf2onnx --tflite``) takes its 0-255 values as they are, resized the same way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import onnx
from onnx import numpy_helper

from layerserve.proto.repository_pb2 import Preprocessing

from .preprocessing import image_layout, image_preprocessing

# A names dict larger than this is not a class list (Ultralytics' largest, Open Images V7, has 601).
MOST_NAMES = 100_000
_KERAS_PRODUCERS = frozenset({"tf2onnx", "keras2onnx"})
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})


@dataclass(frozen=True)
class ExporterDefaults:
    """Preprocessing and labels an exporter's graph implies, and the note that says where they came from."""

    preprocessing: Preprocessing | None
    labels: list[str] | None
    note: str


def exporter_defaults(proto: onnx.ModelProto, per_sample: list[int]) -> ExporterDefaults | None:
    """What ``proto``'s exporter implies for an input of ``per_sample`` shape (module docstring); None when
    the graph does not say who made it, or its exporter needs nothing but the defaults."""
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    layout = image_layout(per_sample)
    if layout is None:
        return None
    channels, height, width = layout
    if metadata.get("author", "").startswith("Ultralytics"):
        plain = image_preprocessing(per_sample, resize=min(height, width), mean=[0.0] * channels,
                                    std=[1.0] * channels)
        labels = ultralytics_names(metadata.get("names", ""))
        task = metadata.get("task", "")
        letterbox = "; Ultralytics letterboxes a detector's pictures, recorded as resize and crop" \
            if task and task != "classify" else ""
        named = f", {len(labels)} class names" if labels else ""
        return ExporterDefaults(plain, labels,
                                f"preprocessing from the Ultralytics metadata: RGB in [0, 1], no mean or std{named}"
                                f"{letterbox}")
    rescaled = input_rescaled(proto)
    integer = bool(proto.graph.input) and proto.graph.input[0].type.tensor_type.elem_type not in _FLOAT_TYPES
    if proto.producer_name in _KERAS_PRODUCERS and integer:
        # A TFLite int8 model through tf2onnx --tflite: quantized pixels, which the client sends as they are.
        return ExporterDefaults(image_preprocessing(per_sample, resize=0, mean=[0.0] * channels, std=[1.0] * channels),
                                None, f"preprocessing: a {proto.producer_name} graph taking integer pixels, so pictures "
                                "go in as their 0-255 values, resized to the input (no crop)")
    if proto.producer_name in _KERAS_PRODUCERS:
        # Keras' image.load_img(target_size=...) squashes the picture to the input's size: no crop.
        plain = image_preprocessing(per_sample, resize=0, mean=[0.0] * channels,
                                    std=[PIXEL if rescaled else 1.0] * channels)
        if rescaled:
            return ExporterDefaults(plain, None, f"preprocessing: the graph scales its input by {rescaled:.6g} itself "
                                    "(a Keras Rescaling layer), so pictures go in as 0-255 values (recorded as std 1/255)")
        return ExporterDefaults(plain, None,
                                f"preprocessing: a {proto.producer_name} graph (Keras scales pictures per model), so "
                                "pictures go in [0, 1] with no mean or std; name the model's with --mean/--std "
                                "(e.g. Keras' MobileNetV2 takes [-1, 1]: --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5)")
    if rescaled:
        return ExporterDefaults(image_preprocessing(per_sample, mean=[0.0] * channels, std=[PIXEL] * channels), None,
                                f"preprocessing: the graph scales its input by {rescaled:.6g} itself, so pictures "
                                "go in as 0-255 values (recorded as std 1/255)")
    return None


# The std that turns [0, 1] pixels into 0-255 ones: (pixel - 0) / (1/255).
PIXEL = 1 / 255
# Operators that move or retype the input without changing its values.
_LAYOUT_OPS = frozenset({"Transpose", "Cast", "Identity", "Reshape", "Unsqueeze"})


def input_rescaled(proto: onnx.ModelProto) -> float | None:
    """The factor by which the graph itself scales its input to [0, 1]-ish values before anything else (a Keras
    ``Rescaling(1/255)``, a ``x / 255`` at the top of ``forward``): a Mul by a constant of at most 1/100 or a Div
    by one of at least 100, after layout operators only; None otherwise."""
    graph = proto.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    current = graph.input[0].name if graph.input else ""
    for _ in range(8):
        following = readers.get(current, [])
        if len(following) != 1:
            return None
        node = following[0]
        if node.op_type in _LAYOUT_OPS:
            current = node.output[0]
            continue
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return None
        other = node.input[1] if node.input[0] == current else node.input[0]
        value = _scalar(graph, other)
        if value is None or (node.op_type == "Div" and other == node.input[0]):
            return None
        factor = 1 / value if node.op_type == "Div" and value else value
        return factor if 0 < factor <= 0.01 else None
    return None


def _scalar(graph: onnx.GraphProto, name: str) -> float | None:
    """The value of the one-element constant ``name`` (an initializer or a Constant node), looked up alone: the
    weights are not read."""
    tensor = next((t for t in graph.initializer if t.name == name), None)
    if tensor is None:
        node = next((n for n in graph.node if n.op_type == "Constant" and list(n.output) == [name]), None)
        tensor = next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def ultralytics_names(text: str) -> list[str] | None:
    """Ultralytics' ``names`` (``"{0: 'person', 1: 'bicycle'}"``) as labels in index order; None when it is not
    such a dict, numbered 0 to n-1."""
    if not text or len(text) > 64 * MOST_NAMES:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(names, dict) or not 0 < len(names) <= MOST_NAMES or set(names) != set(range(len(names))):
        return None
    return [str(names[index]) for index in range(len(names))]


def exported_size(proto: onnx.ModelProto) -> tuple[int, int] | None:
    """The picture size the exporter recorded (Ultralytics' ``imgsz``: ``[640, 640]``), or None."""
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    try:
        size = ast.literal_eval(metadata.get("imgsz", "")[:40]) if metadata.get("imgsz") else None
    except (ValueError, SyntaxError):
        return None
    if isinstance(size, int):
        size = [size, size]
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(d, int) and 0 < d < 1 << 16 for d in size):
        return int(size[0]), int(size[1])
    return None


def exported_stride(proto: onnx.ModelProto) -> int | None:
    """The stride the exporter recorded (Ultralytics' ``stride``: a size must be a multiple of it), or None."""
    text = next((entry.value for entry in proto.metadata_props if entry.key == "stride"), "")
    return int(text) if text.isdigit() and 1 < int(text) < 1 << 12 else None
