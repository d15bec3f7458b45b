"""Wire encodings (proto/encodings.py) through the one codec: what is sent, what the server decodes, what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from layerserve.proto import encodings, grpc_service_pb2, tensors


def _request(array: np.ndarray, encoding: str) -> grpc_service_pb2.ModelInferRequest:
    request = grpc_service_pb2.ModelInferRequest()
    tensors.add_raw_input(request, "x", array, encoding)
    return request


@pytest.mark.parametrize(("encoding", "datatype", "itemsize"), [("fp16", "FP16", 2), ("int8", "INT8", 1)])
def test_encoded_input_travels_in_fewer_bytes_and_decodes_to_fp32(encoding: str, datatype: str, itemsize: int) -> None:
    array = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32)
    request = _request(array, encoding)
    tensor = request.inputs[0]
    assert tensor.datatype == datatype and tensor.parameters["layerserve_encoding"].string_param == encoding
    assert len(request.raw_input_contents[0]) == array.size * itemsize == encodings.ENCODINGS[encoding].wire_bytes(
        array.nbytes)
    decoded = tensors.decode_inputs(request)["x"]
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    # fp16: relative rounding 2^-11; int8: half a step of max|x| / 127.
    bound = 2**-11 * np.abs(array) + 1e-7 if encoding == "fp16" else np.abs(array).max() / 127 / 2 + 1e-6
    assert np.all(np.abs(decoded - array) <= bound)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6),
                  elements=st.floats(-1e4, 1e4, width=32, allow_nan=False)))
def test_int8_error_is_at_most_half_a_step(array: np.ndarray) -> None:
    wire, scale = encodings.encode(array, "int8")
    assert wire.dtype == np.int8 and scale > 0 and np.all(np.abs(wire.astype(int)) <= 127)
    back = encodings.decode(wire, "int8", scale)
    assert np.all(np.abs(back - array) <= scale / 2 * (1 + 1e-5) + 1e-30)


def test_an_all_zero_tensor_gets_scale_one() -> None:
    wire, scale = encodings.encode(np.zeros((1, 4), np.float32), "int8")
    assert scale == 1.0 and not wire.any()


def _tagged(datatype: str, raw: bytes, **parameters: object) -> grpc_service_pb2.ModelInferRequest:
    request = grpc_service_pb2.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, len(raw) // np.dtype(
        tensors.numpy_dtype(datatype)).itemsize])
    for key, value in parameters.items():
        field = {str: "string_param", float: "double_param", int: "int64_param"}[type(value)]
        setattr(tensor.parameters[key], field, value)
    request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(("request_", "message"), [
    (_tagged("FP32", b"\0" * 8, layerserve_encoding="zstd"), "expects one of fp32, fp16, int8, got 'zstd'"),
    (_tagged("FP32", b"\0" * 8, layerserve_encoding="fp16"), "fp16 expects datatype FP16, got float32"),
    (_tagged("INT8", b"\0" * 4, layerserve_encoding="int8"), "int8 expects a finite layerserve_scale > 0"),
    (_tagged("INT8", b"\0" * 4, layerserve_encoding="int8", layerserve_scale=-1.0), "got -1.0"),
    (_tagged("INT8", b"\0" * 4, layerserve_encoding="int8", layerserve_scale=float("nan")), "got nan"),
    (_tagged("INT8", b"\0" * 4, layerserve_encoding="int8", layerserve_scale=3), "expects a double_param, got int64"),
    (_tagged("FP16", b"\0" * 4, layerserve_encoding=7), "expects a string_param, got int64_param"),
    (_tagged("FP32", b"\0" * 4, layerserve_encoding="fp32"), "fp32 is sent without an encoding parameter"),
])
def test_a_bad_encoding_is_a_codec_error_naming_expected_and_got(request_, message: str) -> None:
    with pytest.raises(tensors.TensorCodecError, match="^input 'x': ") as caught:
        tensors.decode_inputs(request_)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_only_fp32_tensors_are_encoded() -> None:
    with pytest.raises(encodings.EncodingError, match="int8 encodes FP32 tensors, got int64"):
        _request(np.arange(4), "int8")
    with pytest.raises(encodings.EncodingError, match="int8 cannot encode a tensor holding inf or NaN"):
        _request(np.array([1.0, np.inf], np.float32), "int8")
