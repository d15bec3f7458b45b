"""Wire encodings through the real server: decoded to FP32 before validation, refused in one line when malformed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import tensors


@pytest.fixture(scope="module")
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


def _infer(channel: grpc.Channel, array: np.ndarray, encoding: str) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="tiny_cnn")
    tensors.add_raw_input(request, "x", array, encoding)
    return tensors.outputs_by_name(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request))["logits"]


@pytest.mark.parametrize("encoding", ["fp16", "int8"])
def test_an_encoded_input_runs_like_fp32(channel: grpc.Channel, encoding: str) -> None:
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    exact, encoded = _infer(channel, x, "fp32"), _infer(channel, x, encoding)
    assert encoded.dtype == np.float32 and encoded.shape == exact.shape == (4, 10)
    assert np.abs(encoded - exact).max() <= (1e-2 if encoding == "fp16" else 0.2) * np.abs(exact).max()


def test_a_chain_takes_an_encoded_activation(channel: grpc.Channel) -> None:
    x = np.random.default_rng(4).standard_normal((2, 1, 8, 8)).astype(np.float32)
    stub = lpb_grpc.LayerServiceStub(channel)
    request = lpb.ChainRequest(model_name="tiny_cnn", start=0, stop=1)
    request.request.model_name = "tiny_cnn.chain"
    tensors.add_raw_input(request.request, "x", x)
    h1 = tensors.outputs_by_name(stub.Chain(request).response)["h1"]
    rest = lpb.ChainRequest(model_name="tiny_cnn", start=1)
    rest.request.model_name = "tiny_cnn.chain"
    tensors.add_raw_input(rest.request, "h1", h1, "int8")
    assert tensors.outputs_by_name(stub.Chain(rest).response)["logits"].shape == (2, 10)


def test_malformed_encodings_are_invalid_argument_in_one_line(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="tiny_cnn")
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[1, 1, 8, 8])
    tensor.parameters["layerserve_encoding"].string_param = "int8"
    request.raw_input_contents.append(bytes(64))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == ("tiny_cnn input 'x': int8 expects a finite layerserve_scale > 0 (double), "
                                      "got None")
    del request.inputs[0].parameters["layerserve_encoding"]  # INT8 bytes, no encoding: validation's refusal
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "got INT8" in caught.value.details()
