"""Per-block statistics for the manifest: parameters, FLOPs, activation bytes.

All figures are per sample: the first dimension of every activation is the batch (in a model whose input has
none, a request is one sample and its tensors are sized whole).
FLOPs count 2 per multiply-add of the weighted layers (export/layers.py: Conv, ConvTranspose, Gemm,
MatMul and their quantized and fused forms; other ops are memory-bound and left out), read off the
block's inferred shapes.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layerserve.proto.tensors import ONNX_ELEM_TYPES, numpy_dtype

from .errors import SplitError
from .graph import constant_attribute
from .layers import LAYERS

# Weights: floating-point initializers, and the 8-bit ones a quantized layer holds (with their per-channel
# zero points). 32- and 64-bit integer initializers are shapes, axes and indices.
WEIGHT_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
})


def parameter_count(block: onnx.ModelProto) -> int:
    """Elements in the block's weight initializers (floating-point or 8-bit; integer shape constants do not count)."""
    return sum(math.prod(t.dims) for t in block.graph.initializer if t.data_type in WEIGHT_TYPES)


def _shapes(block: onnx.ModelProto) -> dict[str, list[int | None]]:
    graph = block.graph
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def flops_per_sample(block: onnx.ModelProto) -> int:
    """FLOPs per sample of the block's weighted layers (export/layers.py; needs inferred shapes)."""
    shapes = _shapes(block)
    total = 0
    for node in block.graph.node:
        layer = LAYERS.get(node.op_type)
        out = shapes.get(node.output[0]) if layer else None
        if not out or any(d is None for d in out[1:]) or len(node.input) <= max(layer.weight, layer.data):
            continue
        per_sample_out = math.prod(out[1:])
        weight = shapes.get(node.input[layer.weight]) or []
        data = shapes.get(node.input[layer.data]) or []
        if layer.kind == "conv":
            total += 2 * per_sample_out * math.prod(weight[1:]) if weight and None not in weight else 0
        elif layer.kind == "conv_transpose":
            if weight and data and None not in weight and None not in data[1:]:
                total += 2 * math.prod(data[1:]) * math.prod(weight[1:])
        elif layer.kind == "gemm":
            trans_a = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
            k = data[0] if trans_a else data[-1] if data else None
            total += 2 * per_sample_out * k if k else 0
        else:
            total += 2 * per_sample_out * data[-1] if data and data[-1] else 0
    return total


def bytes_per_sample(info: onnx.ValueInfoProto, batched: bool = True) -> int:
    """Bytes one sample of a boundary tensor takes (all dimensions after the first must be known). A tensor
    without a batch axis (``batched`` False: every tensor of a model whose input has none, export/batch.py,
    or a ``[5]`` its graph squeezed its batch of 1 out of) is one sample whole: 5 values, not 1."""
    tensor_type = info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    counted = dims[1:] if batched else dims
    if any(d is None for d in counted):
        raise SplitError(f"tensor {info.name!r} has unknown dimensions {dims}; cannot size it per sample")
    itemsize = numpy_dtype(ONNX_ELEM_TYPES[tensor_type.elem_type]).itemsize
    return math.prod(counted) * itemsize


def quantized_outputs(graph: onnx.GraphProto) -> dict[str, tuple[float, int]]:
    """``(scale, zero point)`` of each graph output a QuantizeLinear with one constant scale and zero point
    writes, by name: the real values of a quantized model's integer answer (a full-integer TFLite model's
    INT8 softmax). Only those two operands are read, not every weight."""
    outputs = {output.name for output in graph.output}
    found: dict[str, tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") or node.output[0] not in outputs:
            continue
        scale = _constant(graph, node.input[1])
        zero = _constant(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int64)
        if scale is not None and zero is not None and scale.size == 1 and zero.size == 1 and float(scale.flat[0]) > 0:
            found[node.output[0]] = (float(scale.flat[0]), int(zero.flat[0]))
    return found


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of initializer or Constant node ``name`` (graph.constant_attribute); None when the graph
    computes it."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return constant_attribute(node)
    return None
