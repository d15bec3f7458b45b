"""Every error case: the status code, a message saying what was expected and what came, and
the server still serving afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException


def call(client: triton.InferenceServerClient, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client._client_stub.ModelInfer(request)
    return caught.value


def raw_request(model: str, name: str, array: np.ndarray, datatype: str = "FP32", shape=None, version: str = ""):
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape if shape is None else shape))
    request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


def still_serving(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    assert client.infer("tiny_cnn", [tensor]).as_numpy("logits").shape == (1, 10)


def expect(client, request, code: grpc.StatusCode, message: str) -> None:
    error = call(client, request)
    assert error.code() == code, error.details()
    assert error.details() == message
    still_serving(client)


X = np.zeros((1, 1, 8, 8), np.float32)


def test_wrong_shape_names_expected_and_received(client: triton.InferenceServerClient) -> None:
    expect(client, raw_request("tiny_cnn.02_head", "h2", X), grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn.02_head input 'h2' expects FP32 [-1,8,4,4], got FP32 [1,1,8,8]")


def test_wrong_rank(client: triton.InferenceServerClient) -> None:
    expect(client, raw_request("tiny_cnn", "x", np.zeros((1, 64), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn input 'x' expects FP32 [-1,1,8,8], got FP32 [1,64]")


def test_wrong_dtype(client: triton.InferenceServerClient) -> None:
    expect(client, raw_request("tiny_cnn", "x", X.astype(np.float64), "FP64"), grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn input 'x' expects FP32 [-1,1,8,8], got FP64 [1,1,8,8]")


def test_wrong_input_name(client: triton.InferenceServerClient) -> None:
    expect(client, raw_request("tiny_cnn.00_stem", "image", X), grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn.00_stem has no input 'image' (got FP32 [1,1,8,8]); it expects 'x' FP32 [-1,1,8,8]")


def test_missing_input(client: triton.InferenceServerClient) -> None:
    expect(client, service_pb2.ModelInferRequest(model_name="tiny_cnn"), grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn input 'x' expects FP32 [-1,1,8,8], got nothing")


def test_raw_byte_length_mismatch(client: triton.InferenceServerClient) -> None:
    request = raw_request("tiny_cnn", "x", X, shape=[2, 1, 8, 8])
    expect(client, request, grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn input 'x' declares FP32 [2,1,8,8] = 512 bytes, but its raw contents hold 256 bytes")


def test_unknown_datatype(client: triton.InferenceServerClient) -> None:
    error = call(client, raw_request("tiny_cnn", "x", X, datatype="FP8"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unsupported datatype 'FP8'" in error.details()


def test_batch_over_maximum(client: triton.InferenceServerClient) -> None:
    expect(client, raw_request("tiny_cnn", "x", np.zeros((65, 1, 8, 8), np.float32)),
           grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn input 'x' expects at most 64 rows (max_batch_size), got FP32 [65,1,8,8]")


def test_unknown_output(client: triton.InferenceServerClient) -> None:
    request = raw_request("tiny_cnn", "x", X)
    request.outputs.add(name="probs")
    expect(client, request, grpc.StatusCode.INVALID_ARGUMENT,
           "tiny_cnn has no output 'probs'; it gives 'logits' FP32 [-1,10]")


def test_an_output_requested_twice(client: triton.InferenceServerClient) -> None:
    """The last of the two won silently, with its parameters (a class count) and not the first's."""
    request = raw_request("tiny_cnn", "x", X)
    request.outputs.add(name="logits")
    request.outputs.add(name="logits").parameters["classification"].int64_param = 2
    expect(client, request, grpc.StatusCode.INVALID_ARGUMENT, "tiny_cnn output 'logits' is requested twice")

def test_unknown_model_and_version_are_not_found(client: triton.InferenceServerClient) -> None:
    error = call(client, raw_request("nope", "x", X))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in error.details()
    error = call(client, raw_request("tiny_cnn.99_nothing", "x", X))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "tiny_cnn.99_nothing" in error.details()
    expect(client, raw_request("tiny_cnn", "x", X, version="3"), grpc.StatusCode.NOT_FOUND,
           "model 'tiny_cnn' has no version '3'; versions: 1, 2")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_unavailable_model(client: triton.InferenceServerClient) -> None:
    error = call(client, raw_request("broken_cnn", "x", X))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("model 'broken_cnn' version 1 is unavailable: blocks/01_stage1.onnx sha256")
    still_serving(client)


def test_oversized_message_is_resource_exhausted(client: triton.InferenceServerClient) -> None:
    huge = np.zeros((6000, 1, 8, 8), np.float32)  # 1.5 MiB, over the fixture's 1 MiB limit
    error = call(client, raw_request("tiny_cnn", "x", huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(client)


def test_unexpected_runtime_failure_is_internal_and_server_keeps_serving(tmp_path) -> None:
    """A graph that loads but fails at run time for batch 2 (a Reshape to a fixed batch of 1)."""
    import onnx
    import tiny_repo
    from onnx import TensorProto, helper, numpy_helper
    from server_harness import ServerThread

    from layerserve.proto import manifest as manifests
    from layerserve.server.settings import Settings

    folder = tiny_repo.build(tmp_path, "fragile_cnn", "1")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)],
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
         numpy_helper.from_array(np.ones((10, 64), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
              str(folder / "model.onnx"))
    manifest = manifests.read_manifest(folder)  # the file's output is [1,10]; the manifest must say so too
    manifest.outputs[0].shape[:] = [1, 10]
    manifests.write_manifest(manifest, folder)
    settings = Settings(models=tmp_path, port=0, metrics_port=-1, verify=False, dynamic_batching=False)
    with ServerThread(settings) as running, triton.InferenceServerClient(running.address) as connection:
        error = call(connection, raw_request("fragile_cnn", "x", np.ones((2, 1, 8, 8), np.float32)))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details().startswith("internal error: ")
        ok = connection._client_stub.ModelInfer(raw_request("fragile_cnn", "x", np.ones((1, 1, 8, 8), np.float32)))
        assert np.frombuffer(ok.raw_output_contents[0], np.float32).tolist() == [64.0] * 10
