"""Every LayerClient call against the real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from client_support import BUILT_IN, MODELS, ServerProcess, samples

from layerserve.client import LayerClient, ServerError


def test_health_and_metadata(client: LayerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits_cnn")
    assert client.is_model_ready("digits_cnn.00_stem")
    metadata = client.model_metadata("digits_cnn")
    assert metadata.name == "digits_cnn"
    assert [(s.datatype, s.shape) for s in metadata.inputs] == [("FP32", (-1, 1, 32, 32))]
    assert metadata.outputs[0].shape == (-1, 10)
    assert client.server_metadata().name


def test_list_models_names_every_endpoint(client: LayerClient) -> None:
    names = {m.name for m in client.list_models()}
    for model in BUILT_IN:
        blocks = client.blocks(model)
        assert {model, blocks.chain_model_name, *blocks.block_model_names} <= names


@pytest.mark.parametrize("model", BUILT_IN)
def test_blocks_describe_a_chain(client: LayerClient, model: str) -> None:
    blocks = client.blocks(model)
    assert blocks.manifest.name == model and len(blocks) >= 3
    assert blocks.providers and blocks.block_model_names[0] == f"{model}.{blocks.blocks[0].name}"
    # Each block's output feeds the next block's input: the manifest describes one chain.
    for before, after in zip(blocks.blocks, blocks.blocks[1:], strict=False):
        assert list(before.outputs[0].shape) == list(after.inputs[0].shape)
    last_conv = blocks.final_conv_index()
    assert "Conv" in blocks.blocks[last_conv].op_types
    assert not any("Conv" in b.op_types for b in blocks.blocks[last_conv + 1 :])
    assert blocks.index(blocks.blocks[1].name) == 1 and blocks.index(-1) == len(blocks) - 1


def test_infer_batches_beyond_the_server_limit(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 150)  # > 64 rows: three requests
    whole = client.infer_array("digits_cnn", images)
    assert whole.shape == (150, 10) and whole.dtype == np.float32
    one_by_one = np.concatenate([client.infer_array("digits_cnn", images[i : i + 1]) for i in range(0, 150, 37)])
    # Other batch compositions may round differently in the last bits, never in the class.
    np.testing.assert_allclose(one_by_one, whole[::37], rtol=0, atol=1e-4)
    assert np.array_equal(one_by_one.argmax(1), whole[::37].argmax(1))
    name = client.model_metadata("digits_cnn").inputs[0].name
    by_name = client.infer("digits_cnn", {name: images[:3]})
    assert np.array_equal(next(iter(by_name.values())), whole[:3])


def test_infer_casts_float64_to_the_declared_fp32(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 4)
    assert np.array_equal(client.infer_array("digits_cnn", images.astype(np.float64)), client.infer_array("digits_cnn", images))


def test_shape_error_carries_the_servers_message(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 2)
    with pytest.raises(ServerError) as caught:
        client.infer_array("digits_cnn.04_head", images)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "digits_cnn.04_head" in error.message and "expects FP32 [-1,128,2,2]" in error.message
    assert "got FP32 [2,1,32,32]" in error.message
    assert str(error).startswith("INVALID_ARGUMENT: ")


def test_unknown_model_is_not_found(client: LayerClient) -> None:
    with pytest.raises(ServerError) as caught:
        client.blocks("no_such_model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_unreachable_server_is_unavailable() -> None:
    from client_support import free_port

    from layerserve.client import ConnectionSettings

    with LayerClient(f"127.0.0.1:{free_port()}", ConnectionSettings(timeout=2.0)) as nobody, pytest.raises(ServerError) as caught:
        nobody.is_server_live()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("model", BUILT_IN)
def test_client_and_server_chains_equal_the_full_graph(client: LayerClient, model: str) -> None:
    images, _ = samples(model, 80)
    full = client.infer_array(model, images)
    blocks = client.blocks(model)
    everything = range(len(blocks))
    in_client = client.chain(model, images, where="client", keep=everything)
    on_server = client.chain(model, images, where="server", keep=everything)
    # The same block graphs on the same runtime: bit for bit the same, wherever the chain runs.
    assert np.array_equal(in_client.output, on_server.output)
    # Against the unsplit graph only float rounding may differ (ONNX Runtime fuses across a cut
    # differently); export measured it into the manifest.
    tolerance = max(blocks.manifest.provenance.chain_max_abs_diff * 4, 1e-6)
    np.testing.assert_allclose(in_client.output, full, rtol=0, atol=tolerance)
    assert np.array_equal(in_client.output.argmax(1), full.argmax(1))
    assert in_client.blocks_run == on_server.blocks_run == [b.name for b in blocks.blocks]
    assert list(in_client.kept) == list(on_server.kept) and len(in_client.kept) == len(blocks)
    for block, outputs in in_client.kept.items():
        assert list(outputs) == list(on_server.kept[block]), block
        for tensor, value in outputs.items():
            assert np.array_equal(value, on_server.kept[block][tensor]), (block, tensor)
    assert np.array_equal(in_client.kept_output(blocks.blocks[-1].name), in_client.output)


def test_partial_chain_is_the_composition_of_its_blocks(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 10)
    blocks = client.blocks("digits_cnn")
    x = images
    for index in range(3):
        x = client.infer_array(blocks.block_model_names[index], x)
    for where in ("client", "server"):
        result = client.chain("digits_cnn", images, start=0, stop=3, where=where)
        assert np.array_equal(result.output, x), where
        assert result.blocks_run == [b.name for b in blocks.blocks[:3]]
    rest = client.chain("digits_cnn", x, start=3, where="server").output
    assert np.array_equal(rest, client.chain("digits_cnn", images, where="server").output)


def test_chain_refuses_bad_ranges_locally(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 1)
    with pytest.raises(ValueError, match="block range"):
        client.chain("digits_cnn", images, start=3, stop=3)
    with pytest.raises(ValueError, match="keep"):
        client.chain("digits_cnn", images, stop=2, keep=[4])
    with pytest.raises(ValueError, match="where"):
        client.chain("digits_cnn", images, where="moon")  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["client", "server"])
def test_final_only_on_the_raw_image_is_refused(client: LayerClient, where: str) -> None:
    images, _ = samples("digits_cnn", 3)
    blocks = client.blocks("digits_cnn")
    start = blocks.final_conv_index()
    with pytest.raises(ServerError) as caught:
        client.final_only("digits_cnn", images, where=where)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    expected = blocks.input_spec(start)
    assert str(expected).split(" ", 1)[1] in caught.value.message  # "[-1,64,4,4]"
    assert "[3,1,32,32]" in caught.value.message


@pytest.mark.parametrize("fit", ["resize", "pad", "project"])
def test_final_only_with_a_fit_runs_through_the_head(client: LayerClient, fit: str) -> None:
    images, _ = samples("digits_cnn", 5)
    result = client.final_only("digits_cnn", images, fit=fit)
    blocks = client.blocks("digits_cnn")
    assert result.output.shape == (5, 10)
    assert result.blocks_run == [b.name for b in blocks.blocks[blocks.final_conv_index() :]]
    again = client.final_only("digits_cnn", images, fit=fit, where="server")
    assert np.array_equal(again.output, result.output)  # seeded, deterministic adapters


def test_model_statistics_count_what_ran(client: LayerClient) -> None:
    images, _ = samples("digits_cnn", 7)

    def count() -> int:
        (stats,) = client.model_statistics("digits_cnn.01_stage1")
        return stats.inference_count

    before = count()
    client.chain("digits_cnn", images, start=0, stop=2, where="client")
    assert count() == before + 7


def test_requests_follow_a_server_run_with_a_smaller_max_batch_size(tmp_path: Path) -> None:
    """``serve --max-batch-size 8``: the client sent the manifest's 64 rows and the server refused them
    ("expects at most 8 rows"); ListBlocks still said 64. Every path now sends at most 8 rows a request."""
    (tmp_path / "digits_cnn").symlink_to(MODELS / "digits_cnn", target_is_directory=True)
    x, _ = samples("digits_cnn", 20)
    with ServerProcess(
            tmp_path, ["--metrics-port", "-1", "--workers", "1", "--max-batch-size", "8"]) as server, \
            LayerClient(server.address) as client:
        assert client.blocks("digits_cnn").manifest.serving.max_batch_size == 8
        assert client.max_batch_size("digits_cnn.00_stem") == 8
        full = client.infer_array("digits_cnn", x)
        assert full.shape == (20, 10)
        for where in ("client", "server"):
            np.testing.assert_allclose(client.chain("digits_cnn", x, where=where).output, full, rtol=1e-5, atol=1e-5)
        rows = [stats.inference_stats.success.count for stats in client.model_statistics("digits_cnn")]
    assert rows == [3]  # 8 + 8 + 4


def test_a_row_too_large_for_any_message_is_refused_here_naming_the_shape(client: LayerClient) -> None:
    """A 5-D array for a 4-D input made one 'row' of 67 MB: gRPC refused it in the client ("CLIENT: Sent message
    larger than max"), reported as the server's error, with nothing about the shape."""
    wrong = np.zeros((1, 1, 32, 32, 16_384), np.float32)
    with pytest.raises(ValueError, match=r"one row of input 'x' \[1, 1, 32, 32, 16384\] is 67,108,864 bytes, over "
                                         r"the message limit of [\d,]+ bytes; digits_cnn expects FP32 \[-1, 1, 32, 32\]"):
        client.infer("digits_cnn", wrong)
    with pytest.raises(ValueError, match="one row of input 'x'"):
        client.chain("digits_cnn", wrong, where="server")
    assert client.infer_array("digits_cnn", np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)
