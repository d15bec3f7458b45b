"""Foreign models served with defaults: 16 concurrent batch-1 clients get correct answers from the full
graph, ``<model>.chain`` and the client library's server-side chain; a fixed-batch model is never fed
a merged batch; names with '/' survive kept activations; answers over the message limit are refused
before they run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cnn_zoo
import foreign_graphs
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from layerserve.client import LayerClient
from layerserve.client.placement import BlockRange, Placement
from layerserve.export.runtime import cpu_session
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import tensors
from layerserve.proto.manifest import read_manifest
from layerserve.server.launcher import ServerProcess

MODELS = [*(f"{arch}_{how}" for arch in cnn_zoo.ZOO for how in foreign_graphs.EXPORTS), *foreign_graphs.OTHER_GRAPHS]
CLIENTS = 16


@pytest.fixture(scope="module")
def served(foreign_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``layerserve serve`` with its defaults (workers, batching, limits) over every foreign model."""
    log = tmp_path_factory.mktemp("foreign-server") / "server.log"
    server = ServerProcess(foreign_repository, extra_args=["--metrics-port", "-1", "--log-format", "text"],
                           log_path=log, ready_timeout=180)
    with server:
        yield server.address


def _expected(path: Path, x: np.ndarray) -> np.ndarray:
    """The original file's (first) answer on ONNX Runtime, one row at a time (fixed-batch graphs take one)."""
    session = cpu_session(str(path))
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_sixteen_concurrent_batch1_clients_get_correct_answers(
    served: str, foreign_files: dict[str, Path], foreign_repository: Path, model: str
) -> None:
    manifest = read_manifest(foreign_repository / model / "1")
    spec = manifest.inputs[0]
    x = tensors.example_values(spec.datatype, (CLIENTS, *spec.shape[1:]), np.random.default_rng(7))
    want = _expected(foreign_files[model], x)
    failures: list[str] = []
    answers: dict[tuple[int, str], np.ndarray] = {}
    start = threading.Barrier(CLIENTS)

    def client(row: int) -> None:
        try:
            one = x[row : row + 1]
            with triton.InferenceServerClient(served) as connection, LayerClient(served) as layers:
                start.wait()
                for target in (model, f"{model}.chain"):
                    tensor = triton.InferInput(spec.name, list(one.shape), spec.datatype)
                    tensor.set_data_from_numpy(one)
                    result = connection.infer(target, [tensor])
                    answers[(row, target)] = result.as_numpy(manifest.outputs[0].name)
                answers[(row, "server chain")] = layers.chain(model, one, where="server").scores
        except Exception as error:  # noqa: BLE001 - reported below with the row
            failures.append(f"client {row}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=client, args=(row,)) for row in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    tolerance = foreign_graphs.chain_tolerance([block.inputs[0].datatype for block in manifest.blocks])
    for (row, path), got in answers.items():
        assert got.shape == want[row : row + 1].shape, (row, path)
        assert _relative(got, want[row : row + 1]) <= tolerance, (row, path)
    assert len(answers) == 3 * CLIENTS


@pytest.mark.slow
def test_a_fixed_batch_model_refuses_other_batch_sizes(served: str) -> None:
    with triton.InferenceServerClient(served) as connection:
        tensor = triton.InferInput("onnx::Concat_0", [2, 3, 64, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((2, 3, 64, 64), np.float32))
        for target in ("coordconv_fixed", "coordconv_fixed.chain"):
            with pytest.raises(InferenceServerException) as refused:
                connection.infer(target, [tensor])
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "expects FP32 [1,3,64,64], got FP32 [2,3,64,64]" in refused.value.message()
        metadata = connection.get_model_metadata("coordconv_fixed")
        assert [int(d) for d in metadata.inputs[0].shape] == [1, 3, 64, 64]


@pytest.mark.slow
def test_the_client_library_sends_a_fixed_batch_model_one_row_per_request(
    served: str, foreign_files: dict[str, Path]
) -> None:
    x = np.random.default_rng(3).standard_normal((5, 3, 64, 64)).astype(np.float32)
    want = _expected(foreign_files["coordconv_fixed"], x)
    with LayerClient(served) as client:
        for where in ("client", "server"):
            assert _relative(client.chain("coordconv_fixed", x, where=where).output, want) <= 1e-4
        assert _relative(client.infer_array("coordconv_fixed", x), want) <= 1e-4


@pytest.mark.slow
def test_tensor_names_with_slashes_survive_chains_and_kept_activations(
    served: str, foreign_files: dict[str, Path]
) -> None:
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    want = _expected(foreign_files["zoo_ir3"], x)
    with LayerClient(served) as client:
        blocks = client.blocks("zoo_ir3")
        everything = range(len(blocks))
        on_server = client.chain("zoo_ir3", x, where="server", keep=everything)
        in_client = client.chain("zoo_ir3", x, where="client", keep=everything)
    assert list(on_server.outputs) == ["gpu_0/softmax_1"]
    assert _relative(on_server.output, want) <= 1e-4
    assert list(on_server.kept) == [b.name for b in blocks.blocks] == list(in_client.kept)
    last = blocks.blocks[-1].name
    assert list(on_server.kept[last]) == ["gpu_0/softmax_1"]
    for block in on_server.kept:
        assert list(on_server.kept[block]) == list(in_client.kept[block])
        for tensor, value in on_server.kept[block].items():
            np.testing.assert_array_equal(value, in_client.kept[block][tensor])


@pytest.mark.slow
def test_integer_pixels_and_every_output_travel_every_route(served: str, foreign_files: dict[str, Path]) -> None:
    """UINT8 pixels in, (logits, embedding) out: the full graph and ``.chain`` through tritonclient, the
    client library's chains on the server and in the client, each output equal to ONNX Runtime's."""
    model = "uint8_two_outputs"
    x = tensors.example_values("UINT8", (5, 32, 32, 3), np.random.default_rng(11))
    session = cpu_session(str(foreign_files[model]))
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image_bytes": x}), strict=True))
    assert list(want) == ["logits", "embedding"]
    got: dict[str, dict[str, np.ndarray]] = {}
    with triton.InferenceServerClient(served) as connection:
        for target in (model, f"{model}.chain"):
            tensor = triton.InferInput("image_bytes", list(x.shape), "UINT8")
            tensor.set_data_from_numpy(x)
            result = connection.infer(target, [tensor], outputs=[triton.InferRequestedOutput(n) for n in want])
            got[target] = {name: result.as_numpy(name) for name in want}
    with LayerClient(served) as client:
        got["infer"] = client.infer(model, x)
        got["server chain"] = client.chain(model, x, where="server").outputs
        got["client chain"] = client.chain(model, x, where="client").outputs
        assert np.array_equal(client.chain(model, x, where="server").scores, got["server chain"]["logits"])
    for route, outputs in got.items():
        assert list(outputs) == list(want), route
        for name, value in outputs.items():
            assert _relative(value, want[name]) <= 1e-5, (route, name)


@pytest.mark.slow
def test_a_quantized_models_int8_activations_cross_the_wire_as_they_are(
    served: str, foreign_files: dict[str, Path]
) -> None:
    model = "qoperator_int8"
    x = np.random.default_rng(12).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = _expected(foreign_files[model], x)
    with LayerClient(served) as client:
        count = len(client.blocks(model))
        in_client = client.chain(model, x, where="client", keep=range(count))
        on_server = client.chain(model, x, where="server", keep=range(count))
        # fp16 asked for on every hop: the FP32 image travels as FP16, the INT8 activations as they are.
        placement = Placement((BlockRange(0, count - 1, served, "fp16"),))
        encoded = client.chain(model, x, where="client", keep=range(count), placement=placement)
        # Two server chains, the second starting at an INT8 cut that fp16 leaves as it is.
        split = Placement((BlockRange(0, 1, served, "fp32"), BlockRange(2, count - 1, served, "fp16")))
        halves = client.chain(model, x, where="server", placement=split)
    between = [value for block in list(in_client.kept)[:-1] for value in in_client.kept[block].values()]
    assert between and {value.dtype for value in between} == {np.dtype(np.int8)}
    for block, outputs in on_server.kept.items():
        for name, value in outputs.items():
            np.testing.assert_array_equal(value, in_client.kept[block][name])
            assert encoded.kept[block][name].dtype == value.dtype
    assert _relative(in_client.scores, want) <= 1e-5
    assert _relative(encoded.scores, want) <= 0.05
    np.testing.assert_array_equal(halves.scores, in_client.scores)


@pytest.fixture(scope="module")
def small_limit(foreign_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ResNet-style model behind a 4 MiB message limit: 6 images fit a request, not their activations."""
    log = tmp_path_factory.mktemp("limit-server") / "server.log"
    root = tmp_path_factory.mktemp("limit-models")
    (root / "resnet_torchscript").symlink_to(foreign_repository / "resnet_torchscript", target_is_directory=True)
    extra = ["--metrics-port", "-1", "--log-format", "text", "--max-message-bytes", str(4 << 20), "--workers", "1"]
    with ServerProcess(root, extra_args=extra, log_path=log) as server:
        yield server.address


@pytest.mark.slow
def test_an_answer_over_the_message_limit_is_refused_before_it_runs(small_limit: str) -> None:
    with LayerClient(small_limit) as client:
        found = client.blocks("resnet_torchscript")
        manifest_blocks = found.blocks
        assert found.max_message_bytes == 4 << 20
    x = np.zeros((6, *cnn_zoo.IMAGE_SHAPE), np.float32)
    request = lpb.ChainRequest(model_name="resnet_torchscript", keep=range(len(manifest_blocks)))
    request.request.model_name = "resnet_torchscript.chain"
    tensors.add_raw_input(request.request, manifest_blocks[0].inputs[0].name, x)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(small_limit, options=options) as channel, pytest.raises(grpc.RpcError) as refused:
        lpb_grpc.LayerServiceStub(channel).Chain(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    per_row = sum(b.output_bytes_per_sample for b in manifest_blocks)
    fits = ((4 << 20) - 64 * 1024) // per_row
    assert f"over the server's message limit of {4 << 20:,} bytes; send at most {fits} rows per request" in (
        refused.value.details()
    )


@pytest.mark.slow
def test_the_client_splits_requests_to_fit_the_servers_limit(small_limit: str, foreign_files: dict[str, Path]) -> None:
    x = np.random.default_rng(9).standard_normal((6, *cnn_zoo.IMAGE_SHAPE)).astype(np.float32)
    want = _expected(foreign_files["resnet_torchscript"], x)
    with LayerClient(small_limit) as client:
        everything = range(len(client.blocks("resnet_torchscript")))
        on_server = client.chain("resnet_torchscript", x, where="server", keep=everything)
        in_client = client.chain("resnet_torchscript", x, where="client", keep=everything)
        full = client.infer_array("resnet_torchscript", x)
    for result in (on_server, in_client):
        assert _relative(result.output, want) <= 1e-4
    assert _relative(full, want) <= 1e-4
    for block, outputs in on_server.kept.items():
        for tensor, value in outputs.items():
            np.testing.assert_array_equal(value, in_client.kept[block][tensor])
