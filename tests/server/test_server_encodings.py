"""Wire encodings through the real server, over gRPC and REST: decoded to FP32 before validation, refused in
one line when malformed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from layerserve.proto import encodings, tensors
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc


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


def _post(url: str, document: dict, binary: bytes = b"") -> tuple[int, dict]:
    """POST an Open Inference Protocol body over REST (JSON, then any binary chunks); (status, JSON answer)."""
    header = json.dumps(document).encode()
    request = urllib.request.Request(url, data=header + binary, method="POST", headers={
        "Content-Type": "application/octet-stream" if binary else "application/json",
        **({"Inference-Header-Content-Length": str(len(header))} if binary else {})})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _rest_input(array: np.ndarray, encoding: str, binary: bool) -> tuple[dict, bytes]:
    wire, scale = encodings.encode(array, encoding)
    tensor: dict = {"name": "x", "shape": list(array.shape), "datatype": tensors.datatype_of(wire.dtype),
                    "parameters": {} if encoding == "fp32" else {"layerserve_encoding": encoding}}
    if scale is not None:
        tensor["parameters"]["layerserve_scale"] = scale
    if binary:
        tensor["parameters"]["binary_data_size"] = wire.nbytes
        return tensor, wire.tobytes()
    tensor["data"] = wire.ravel().tolist()
    return tensor, b""


@pytest.mark.parametrize(("encoding", "binary"), [("fp16", False), ("fp16", True), ("int8", False), ("int8", True)])
def test_rest_decodes_an_encoded_input_as_grpc_does(server, encoding: str, binary: bool) -> None:
    x = np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)
    url = f"{server.http_url}/v2/models/tiny_cnn/infer"
    answers = {}
    for sent in ("fp32", encoding):
        tensor, chunk = _rest_input(x, sent, binary)
        status, answer = _post(url, {"inputs": [tensor]}, chunk)
        assert status == 200, answer
        answers[sent] = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(3, 10)
    exact, decoded = answers["fp32"], answers[encoding]
    grpc_side = _infer(grpc.insecure_channel(server.address), x, encoding)
    np.testing.assert_allclose(decoded, grpc_side, rtol=1e-5, atol=1e-5)  # the same FP32 tensor ran
    assert np.abs(decoded - exact).max() <= (1e-2 if encoding == "fp16" else 0.2) * np.abs(exact).max()


def test_rest_chain_takes_an_encoded_activation(server) -> None:
    x = np.random.default_rng(6).standard_normal((2, 1, 8, 8)).astype(np.float32)
    status, first = _post(f"{server.http_url}/v2/models/tiny_cnn/chain",
                          {"stop": 1, "inputs": [{"name": "x", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                                  "data": x.ravel().tolist()}]})
    assert status == 200, first
    (h1,) = first["outputs"]
    activation = np.asarray(h1["data"], np.float32).reshape(h1["shape"])
    tensor, _ = _rest_input(activation, "int8", binary=False)
    tensor["name"] = "h1"
    status, rest = _post(f"{server.http_url}/v2/models/tiny_cnn/chain", {"start": 1, "inputs": [tensor]})
    assert status == 200, rest
    assert rest["outputs"][0]["shape"] == [2, 10]


@pytest.mark.parametrize(("parameters", "message"), [
    ({"layerserve_encoding": "int8"},
     "tiny_cnn input 'x': int8 expects a finite layerserve_scale > 0 (double), got None"),
    ({"layerserve_encoding": 8, "layerserve_scale": 0.1},
     "tiny_cnn input 'x': parameter layerserve_encoding expects a string, got int"),
    ({"layerserve_encoding": "int8", "layerserve_scale": "0.1"},
     "tiny_cnn input 'x': parameter layerserve_scale expects a number, got str"),
    ({"layerserve_encoding": "zstd"}, "tiny_cnn input 'x': encoding expects one of fp32, fp16, int8, got 'zstd'"),
])
def test_rest_refuses_malformed_encodings_with_grpcs_message(server, parameters: dict, message: str) -> None:
    tensor = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "INT8", "data": [0] * 64, "parameters": parameters}
    status, answer = _post(f"{server.http_url}/v2/models/tiny_cnn/infer", {"inputs": [tensor]})
    assert (status, answer) == (400, {"error": message})
    tensor = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    assert _post(f"{server.http_url}/v2/models/tiny_cnn/infer", {"inputs": [tensor]})[0] == 200
