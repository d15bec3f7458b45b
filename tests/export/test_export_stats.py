"""Parameters, FLOPs and activation bytes, checked against hand counts on digits_cnn's blocks."""

from __future__ import annotations

from pathlib import Path

import onnx

from layerserve.export.stats import bytes_per_sample, flops_per_sample, parameter_count

BLOCKS = Path(__file__).resolve().parents[2] / "models" / "digits_cnn" / "1" / "blocks"


def test_stem_counts() -> None:
    stem = onnx.load(str(BLOCKS / "00_stem.onnx"))
    # Conv 1->16, 3x3, BN folded into weight + bias; 32x32 output, then 2x2 max-pool.
    assert parameter_count(stem) == 16 * 1 * 9 + 16
    assert flops_per_sample(stem) == 2 * (16 * 32 * 32) * (1 * 9)
    assert bytes_per_sample(stem.graph.output[0]) == 16 * 16 * 16 * 4


def test_head_counts() -> None:
    head = onnx.load(str(BLOCKS / "04_head.onnx"))
    # Flatten 128x2x2 = 512, Linear 512->10; the int64 reshape target is not a parameter.
    assert parameter_count(head) == 512 * 10 + 10
    assert flops_per_sample(head) == 2 * 512 * 10
    assert bytes_per_sample(head.graph.input[0]) == 512 * 4
