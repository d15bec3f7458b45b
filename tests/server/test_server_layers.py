"""The layerserve.v1 extension through our generated stubs: ListBlocks and server-side chains."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import tensors


@pytest.fixture
def layers(server) -> lpb_grpc.LayerServiceStub:
    with grpc.insecure_channel(server.address) as channel:
        yield lpb_grpc.LayerServiceStub(channel)


def run_file(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_list_blocks(layers: lpb_grpc.LayerServiceStub) -> None:
    answer = layers.ListBlocks(lpb.ListBlocksRequest(model_name="tiny_cnn"))
    assert answer.manifest.version == "2"
    assert [b.name for b in answer.manifest.blocks] == ["00_stem", "01_stage1", "02_head"]
    assert answer.manifest.blocks[1].flops == 2 * 8 * 36 * 16 and answer.manifest.blocks[1].parameters == 8 * 36 + 8
    assert list(answer.manifest.blocks[2].outputs[0].shape) == [-1, 10]
    assert list(answer.providers) == ["CPUExecutionProvider"]
    assert answer.full_model_name == "tiny_cnn" and answer.chain_model_name == "tiny_cnn.chain"
    assert list(answer.block_model_names) == ["tiny_cnn.00_stem", "tiny_cnn.01_stage1", "tiny_cnn.02_head"]
    assert layers.ListBlocks(lpb.ListBlocksRequest(model_name="tiny_cnn", model_version="1")).manifest.version == "1"


def test_list_blocks_errors(layers: lpb_grpc.LayerServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        layers.ListBlocks(lpb.ListBlocksRequest(model_name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        layers.ListBlocks(lpb.ListBlocksRequest(model_name="broken_cnn"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def chain_request(start: int, stop: int | None, keep: list[int], name: str, array: np.ndarray) -> lpb.ChainRequest:
    request = lpb.ChainRequest(model_name="tiny_cnn", start=start, keep=keep)
    if stop is not None:
        request.stop = stop
    tensors.add_raw_input(request.request, name, array)
    return request


def test_chain_middle_blocks_with_kept_activation(layers, tiny_repository: Path) -> None:
    folder = tiny_repository / "tiny_cnn" / "2"
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    (h1,) = run_file(folder / "blocks/00_stem.onnx", {"x": x})
    (h2,) = run_file(folder / "blocks/01_stage1.onnx", {"h1": h1})
    (logits,) = run_file(folder / "blocks/02_head.onnx", {"h2": h2})
    answer = layers.Chain(chain_request(1, None, [1], "h1", h1))
    assert list(answer.blocks_run) == ["01_stage1", "02_head"]
    outputs = tensors.outputs_by_name(answer.response)
    assert list(outputs) == ["logits"]
    np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-5, atol=1e-5)
    # Kept activations travel in their own field, under the block's and the tensor's own names.
    assert [(k.block_index, k.block_name) for k in answer.kept] == [(1, "01_stage1")]
    kept = tensors.outputs_by_name(answer.kept[0].outputs)
    assert list(kept) == ["h2"]
    np.testing.assert_allclose(kept["h2"], h2, rtol=1e-5, atol=1e-5)
    first_only = tensors.outputs_by_name(layers.Chain(chain_request(0, 1, [], "x", x)).response)
    np.testing.assert_allclose(first_only["h1"], h1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("start", "stop", "keep", "message"),
    [
        (2, 1, [], "tiny_cnn chain expects 0 <= start < stop <= 3, got start=2 stop=1"),
        (0, 4, [], "tiny_cnn chain expects 0 <= start < stop <= 3, got start=0 stop=4"),
        (0, 2, [2], "tiny_cnn chain keeps block 2, which is outside [0, 2)"),
    ],
)
def test_chain_range_errors(layers, start, stop, keep, message) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        layers.Chain(chain_request(start, stop, keep, "x", np.zeros((1, 1, 8, 8), np.float32)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


def test_chain_input_mismatch_names_the_block(layers) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        layers.Chain(chain_request(2, None, [], "x", np.zeros((1, 1, 8, 8), np.float32)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "tiny_cnn chain [2, 3) block 02_head has no input 'x' (got FP32 [1,1,8,8]); it expects 'h2' FP32 [-1,8,4,4]"
    )


def _chain_statistics(client) -> dict:
    (stats,) = client.get_inference_statistics("tiny_cnn.chain", "2", as_json=True)["model_stats"]
    infer = stats["inference_stats"]
    return {
        "success": int(infer.get("success", {}).get("count", 0)),
        "fail": int(infer.get("fail", {}).get("count", 0)),
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
    }


def test_chain_rpcs_count_in_the_chain_endpoints_statistics(layers, client) -> None:
    before = _chain_statistics(client)
    layers.Chain(chain_request(0, None, [], "x", np.zeros((3, 1, 8, 8), np.float32)))
    with pytest.raises(grpc.RpcError):
        layers.Chain(chain_request(2, None, [], "x", np.zeros((1, 1, 8, 8), np.float32)))
    after = _chain_statistics(client)
    assert after["success"] - before["success"] == 1
    assert after["fail"] - before["fail"] == 1
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
