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
