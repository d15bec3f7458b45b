"""The committed stubs match the .proto files, and coexist with tritonclient's."""

from pathlib import Path

import numpy as np
import pytest

from layerserve.proto import generate, grpc_service_pb2, tensors

PROTO_DIR = Path(generate.__file__).parent


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert written, "protoc wrote nothing"
    stale = [p.name for p in written if p.read_text() != (PROTO_DIR / p.name).read_text()]
    assert not stale, f"stale generated files (run `make proto`): {stale}"


def test_stubs_coexist_with_tritonclient() -> None:
    import tritonclient.grpc  # registers its own inference/grpc_service.proto

    request = grpc_service_pb2.ModelInferRequest(model_name="m")
    assert tritonclient.grpc.service_pb2.ModelInferRequest.FromString(request.SerializeToString()).model_name == "m"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "uint8", "bool", "float16"])
def test_raw_round_trip(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    request = grpc_service_pb2.ModelInferRequest()
    tensors.add_raw_input(request, "x", array)
    decoded = tensors.decode_input(request.inputs[0], request.raw_input_contents[0])
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_typed_round_trip() -> None:
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    request = grpc_service_pb2.ModelInferRequest()
    tensors.add_typed_input(request, "x", array)
    assert np.array_equal(tensors.decode_input(request.inputs[0], None), array)


def test_huge_declared_shape_is_refused_without_allocating() -> None:
    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2**40, 2**20])
    with pytest.raises(tensors.TensorCodecError, match="raw contents hold 4 bytes"):
        tensors.decode_input(tensor, b"\0\0\0\0")


def test_negative_dimension_is_refused() -> None:
    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[-1, 4])
    with pytest.raises(tensors.TensorCodecError, match="negative dimension"):
        tensors.decode_input(tensor, b"")


def test_one_served_name_scheme() -> None:
    from layerserve.proto import names

    assert names.block_name("digits_cnn", "02_stage2") == "digits_cnn.02_stage2"
    assert names.chain_name("digits_cnn") == "digits_cnn.chain"
    models = ["resnet", "resnet.v2", "digits_cnn"]
    assert names.owner("resnet.v2.00_stem", models) == "resnet.v2"  # the longest model name wins
    assert names.owner("resnet.chain", models) == "resnet"
    assert names.owner("resnetx", models) is None
