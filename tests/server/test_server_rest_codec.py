"""The REST tensor codec without a socket: JSON and binary bodies decode alike, refusals say what came."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerserve.proto.tensors import TensorCodecError
from layerserve.server.errors import InvalidInput
from layerserve.server.rest_codec import decode_request, encode_body, encode_tensors


def _binary(arrays: dict[str, np.ndarray], **extra: object) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": n, "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                                     "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
                                    for n, a in arrays.items()], **extra}).encode()
    return header + b"".join(a.tobytes() for a in arrays.values()), str(len(header))


def test_json_flat_json_nested_and_binary_decode_to_the_same_arrays() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ids = np.array([[1, -2]], np.int64)
    body, length = _binary({"x": x, "ids": ids}, outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    binary = decode_request(body, length)
    flat = decode_request(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 3, 4], "data": x.ravel().tolist()},
        {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [[1, -2]]}]}).encode(), None)
    for decoded in (binary, flat):
        np.testing.assert_array_equal(decoded.inputs["x"], x)
        np.testing.assert_array_equal(decoded.inputs["ids"], ids)
        assert decoded.inputs["x"].dtype == np.float32 and decoded.inputs["ids"].dtype == np.int64
    assert binary.outputs == ["y"] and binary.wants_binary("y") and not flat.wants_binary("y")


def test_outputs_round_trip_in_binary_and_json_nan_included() -> None:
    y = np.array([[1.5, np.nan, np.inf]], np.float32)
    chunks: list = []
    described = encode_tensors({"y": y}, lambda name: True, chunks)
    body, headers = encode_body({"outputs": described}, chunks)
    length = int(dict(headers)[b"inference-header-content-length"])
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 12}
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(1, 3), y)
    body, headers = encode_body({"outputs": encode_tensors({"y": y}, lambda name: False, [])})
    assert dict(headers)[b"content-type"] == b"application/json"
    np.testing.assert_array_equal(np.array(json.loads(body)["outputs"][0]["data"], np.float32), y.ravel())


@pytest.mark.parametrize(("body", "length", "error", "message"), [
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["1", "2"]}]}', None, TensorCodecError,
     "input 'x' is FP32, so 'data' expects numbers, got 'U' values such as '1'"),
    (b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}', None, TensorCodecError,
     "input 'x' is INT8 but 'data' holds values outside [-128, 127]"),
    (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}', None, TensorCodecError,
     "input 'x' is INT32, so 'data' expects integers"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}', None, TensorCodecError,
     "input 'x' 'data' is not a regular array of numbers"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1099511627776], "data": [1]}]}', None,
     TensorCodecError, "input 'x' declares FP32 [1099511627776] = 1099511627776 elements, but 'data' holds 1"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [NaN, 1]}]}', None, InvalidInput,
     "request body is not valid JSON"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}xxxxyy',
     "header", TensorCodecError, "request declares 4 bytes of binary input data, but the body holds 6"),
    (b'{"inputs": []}', "99", InvalidInput, "Inference-Header-Content-Length expects at most the body's 14 bytes, "
     "got 99"),
    (b'[1, 2]', None, InvalidInput, "request body expects a JSON object, got list"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}', None, TensorCodecError,
     "input 'x' has a negative dimension in shape [-1]"),
])
def test_malformed_bodies_are_refused_saying_what_came(body: bytes, length: str | None, error: type,
                                                       message: str) -> None:
    if length == "header":  # the JSON object ends where the binary data begins
        length = str(body.index(b"}]}") + 3)
    with pytest.raises(error) as raised:
        decode_request(body, length)
    assert str(raised.value).startswith(message), str(raised.value)
