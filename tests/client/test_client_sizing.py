"""How many rows one request carries (client/sizing.py): pure functions, no server."""

from __future__ import annotations

from layerserve.client.sizing import MESSAGE_OVERHEAD_BYTES, rows_per_request, total_row_bytes
from layerserve.proto.tensors import TensorSpec

MIB = 1 << 20


def test_a_fixed_batch_is_sent_as_it_is() -> None:
    assert rows_per_request(64, 64 * MIB, 602_112, 4_000, fixed_batch=1) == 1


def test_the_batch_size_caps_small_rows() -> None:
    assert rows_per_request(64, 64 * MIB, 4_096, 40) == 64


def test_a_large_activation_lowers_the_rows_to_what_the_limit_takes() -> None:
    # A 224x224 ResNet stem: 3.2 MB per image answered, 0.6 MB asked.
    stem = 64 * 112 * 112 * 4
    rows = rows_per_request(64, 64 * MIB, 3 * 224 * 224 * 4, stem)
    assert rows == (64 * MIB - MESSAGE_OVERHEAD_BYTES) // stem == 20
    assert rows * stem + MESSAGE_OVERHEAD_BYTES <= 64 * MIB < (rows + 1) * stem + MESSAGE_OVERHEAD_BYTES


def test_at_least_one_row_goes_even_when_one_row_is_too_large() -> None:
    # The server then explains the refusal; the client never loops on zero rows.
    assert rows_per_request(64, MIB, 4 * MIB, None) == 1


def test_unknown_sizes_leave_only_the_batch_size() -> None:
    assert total_row_bytes([10, None, 5]) is None
    assert rows_per_request(64, MIB, 100, total_row_bytes([10, None])) == 64
    assert rows_per_request(0, 10 * MIB, 4 * MIB, None) == 2  # 0: no batch cap


def test_row_bytes_of_a_spec() -> None:
    assert TensorSpec("x", "FP32", (-1, 3, 224, 224)).row_bytes() == 602_112
    assert TensorSpec("x", "FP16", (1, 8)).row_bytes() == 16
    assert TensorSpec("x", "FP32", (-1, 3, -1, -1)).row_bytes() is None
