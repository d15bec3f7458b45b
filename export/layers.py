"""Which operators are layers with weights, however the graph was written.

Blocks are named and sized by their weighted layers (export/naming.py, export/stats.py). A float
graph writes them as Conv, ConvTranspose, Gemm and MatMul; ONNX Runtime's quantization writes the
same layers as ConvInteger and MatMulInteger (dynamic, e.g. ``optimum-cli onnxruntime quantize``),
or QLinearConv, QLinearMatMul and com.microsoft's QGemm (static, QOperator format); a graph saved
after ONNX Runtime's optimizations holds its fused FusedConv, FusedGemm and FusedMatMul. Counting
only the float names made a dynamically quantized ResNet one block with no FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class Layer:
    """How a weighted operator computes: ``kind`` "conv", "conv_transpose", "gemm" or "matmul"; ``weight``
    the input index of its weight; ``data`` that of its (activation) input."""

    kind: str
    weight: int = 1
    data: int = 0


LAYERS: dict[str, Layer] = {
    "Conv": Layer("conv"),
    "FusedConv": Layer("conv"),
    "ConvInteger": Layer("conv"),
    "QLinearConv": Layer("conv", weight=3),
    "ConvTranspose": Layer("conv_transpose"),
    "Gemm": Layer("gemm"),
    "FusedGemm": Layer("gemm"),
    "QGemm": Layer("gemm", weight=3),
    "MatMul": Layer("matmul"),
    "FusedMatMul": Layer("matmul"),
    "MatMulInteger": Layer("matmul"),
    "QLinearMatMul": Layer("matmul", weight=3),
}

WEIGHTED_OPS = frozenset(LAYERS)


def convolution_dimensions(graph: onnx.GraphProto) -> set[int]:
    """The spatial dimensions of the graph's convolutions (2 for pictures, 1 for signals), read from their
    weights' ranks: initializers, also behind a DequantizeLinear (a QDQ model) or a Constant node."""
    weights = {tensor.name: len(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            weights[node.output[0]] = len(node.attribute[0].t.dims)
        elif node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    return {weights[node.input[LAYERS[node.op_type].weight]] - 2 for node in graph.node
            if node.op_type in LAYERS and LAYERS[node.op_type].kind in ("conv", "conv_transpose")
            and len(node.input) > LAYERS[node.op_type].weight and node.input[LAYERS[node.op_type].weight] in weights}
