"""Per-block statistics for the manifest: parameters, FLOPs, activation bytes.

All figures are per sample: the first dimension of every activation is the batch.
FLOPs count 2 per multiply-add of Conv, ConvTranspose, Gemm and MatMul nodes (other
ops are memory-bound and left out), read off the block's inferred shapes.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from layerserve.proto.tensors import ONNX_ELEM_TYPES, numpy_dtype

from .errors import SplitError

_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16})


def parameter_count(block: onnx.ModelProto) -> int:
    """Elements in the block's floating-point initializers (its weights; integer shape constants do not count)."""
    return sum(math.prod(t.dims) for t in block.graph.initializer if t.data_type in _FLOAT_TYPES)


def _shapes(block: onnx.ModelProto) -> dict[str, list[int | None]]:
    graph = block.graph
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def flops_per_sample(block: onnx.ModelProto) -> int:
    """FLOPs per sample of the block's Conv/ConvTranspose/Gemm/MatMul nodes (needs inferred shapes)."""
    shapes = _shapes(block)
    total = 0
    for node in block.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        if not out or any(d is None for d in out[1:]):
            continue
        per_sample_out = math.prod(out[1:])
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1]) or []
            total += 2 * per_sample_out * math.prod(weight[1:]) if weight and None not in weight else 0
        elif node.op_type == "ConvTranspose":
            weight = shapes.get(node.input[1]) or []
            inp = shapes.get(node.input[0]) or []
            if weight and inp and None not in weight and None not in inp[1:]:
                total += 2 * math.prod(inp[1:]) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            a = shapes.get(node.input[0]) or []
            trans_a = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[-1] if a else None
            total += 2 * per_sample_out * k if k else 0
        else:
            a = shapes.get(node.input[0]) or []
            total += 2 * per_sample_out * a[-1] if a and a[-1] else 0
    return total


def bytes_per_sample(info: onnx.ValueInfoProto) -> int:
    """Bytes one sample of a boundary tensor takes (all dimensions after the first must be known)."""
    tensor_type = info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if any(d is None for d in dims[1:]):
        raise SplitError(f"tensor {info.name!r} has unknown dimensions {dims}; cannot size it per sample")
    itemsize = numpy_dtype(ONNX_ELEM_TYPES[tensor_type.elem_type]).itemsize
    return math.prod(dims[1:]) * itemsize
