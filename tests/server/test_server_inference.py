"""The Open Inference Protocol through tritonclient.grpc against the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from layerserve.proto import manifest as manifests


def reference(repository: Path, relative: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What in-process ONNX Runtime computes for one file of the repository."""
    session = ort.InferenceSession(str(repository / relative), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def infer(client: triton.InferenceServerClient, model: str, name: str, array: np.ndarray, version: str = "",
          outputs: list[str] | None = None) -> triton.InferResult:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    requested = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [tensor], model_version=version, outputs=requested)


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 8, 8)).astype(np.float32)


def test_live_ready_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "layerserve"
    assert "layerserve.v1.LayerService" in metadata.extensions


def test_model_ready_per_endpoint(client: triton.InferenceServerClient) -> None:
    for name in ("tiny_cnn", "tiny_cnn.00_stem", "tiny_cnn.02_head", "tiny_cnn.chain"):
        assert client.is_model_ready(name), name
    assert client.is_model_ready("tiny_cnn", "1")
    assert not client.is_model_ready("tiny_cnn", "7")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("broken_cnn")


def test_model_metadata_gives_exact_specs(client: triton.InferenceServerClient) -> None:
    full = client.get_model_metadata("tiny_cnn")
    assert full.platform == "onnxruntime_onnx"
    assert list(full.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in full.inputs] == [("x", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in full.outputs] == [("logits", "FP32", [-1, 10])]
    head = client.get_model_metadata("tiny_cnn.02_head")
    assert [(t.name, list(t.shape)) for t in head.inputs] == [("h2", [-1, 8, 4, 4])]
    chain = client.get_model_metadata("tiny_cnn.chain")
    assert [t.name for t in chain.inputs] == ["x"] and [t.name for t in chain.outputs] == ["logits"]


def test_full_block_and_chain_equal_onnxruntime(client: triton.InferenceServerClient, tiny_repository: Path) -> None:
    folder = tiny_repository / "tiny_cnn" / "2"
    x = images(3)
    (want,) = reference(folder, "model.onnx", {"x": x})
    full = infer(client, "tiny_cnn", "x", x).as_numpy("logits")
    np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-5)
    chain = infer(client, "tiny_cnn.chain", "x", x).as_numpy("logits")
    np.testing.assert_allclose(chain, want, rtol=1e-5, atol=1e-5)
    # Block by block, each answer feeding the next request, as a client would chain them.
    h1 = infer(client, "tiny_cnn.00_stem", "x", x).as_numpy("h1")
    np.testing.assert_allclose(h1, reference(folder, "blocks/00_stem.onnx", {"x": x})[0], rtol=1e-5, atol=1e-5)
    h2 = infer(client, "tiny_cnn.01_stage1", "h1", h1).as_numpy("h2")
    logits = infer(client, "tiny_cnn.02_head", "h2", h2).as_numpy("logits")
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_versions_are_served_separately(client: triton.InferenceServerClient, tiny_repository: Path) -> None:
    x = images(2, seed=5)
    v1 = infer(client, "tiny_cnn", "x", x, version="1")
    assert v1.get_response().model_version == "1"
    (want,) = reference(tiny_repository / "tiny_cnn" / "1", "model.onnx", {"x": x})
    np.testing.assert_allclose(v1.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    latest = infer(client, "tiny_cnn", "x", x)
    assert latest.get_response().model_version == "2"
    assert not np.allclose(latest.as_numpy("logits"), want)


def test_typed_contents_are_accepted(client: triton.InferenceServerClient, tiny_repository: Path) -> None:
    from tritonclient.grpc import service_pb2

    x = images(2, seed=9)
    request = service_pb2.ModelInferRequest(model_name="tiny_cnn")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = client._client_stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 10)
    (want,) = reference(tiny_repository / "tiny_cnn" / "2", "model.onnx", {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_requested_outputs_and_request_id(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(images(1))
    result = client.infer("tiny_cnn", [tensor], request_id="abc-1", outputs=[triton.InferRequestedOutput("logits")])
    assert result.get_response().id == "abc-1"
    assert result.as_numpy("logits").shape == (1, 10)


def test_repository_index_reports_unavailable_model(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    states = {(m.name, m.version): (m.state, m.reason) for m in index.models}
    assert states[("tiny_cnn", "2")] == ("READY", "")
    assert ("tiny_cnn.01_stage1", "1") in states and ("tiny_cnn.chain", "2") in states
    state, reason = states[("broken_cnn", "1")]
    assert state == "UNAVAILABLE" and "sha256" in reason and "01_stage1" in reason
    from tritonclient.grpc import service_pb2

    ready_only = client._client_stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert ready_only.models and all(m.state == "READY" for m in ready_only.models)
    assert "broken_cnn" not in {m.name for m in ready_only.models}


def test_model_statistics_count_inferences(client: triton.InferenceServerClient) -> None:
    before = client.get_inference_statistics("tiny_cnn.00_stem", "2").model_stats[0]
    infer(client, "tiny_cnn.00_stem", "x", images(4))
    after = client.get_inference_statistics("tiny_cnn.00_stem", "2").model_stats[0]
    assert after.inference_count == before.inference_count + 4
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.last_inference > 0
    everything = client.get_inference_statistics()
    assert {"tiny_cnn", "tiny_cnn.chain"} <= {s.name for s in everything.model_stats}


@pytest.fixture(scope="module")
def committed_server():
    """The server over the committed models/ folder (skipped until export has produced it)."""
    from server_harness import REPO_ROOT, ServerThread

    from layerserve.server.settings import Settings

    root = REPO_ROOT / "models"
    if not any(root.glob("*/*/manifest.json")):
        pytest.skip("no committed model repository yet")
    with ServerThread(Settings(models=root, port=0, metrics_port=-1)) as running:
        yield running


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_committed_models_full_blocks_chain(committed_server, name: str) -> None:
    from server_harness import REPO_ROOT

    folder = REPO_ROOT / "models" / name
    if not folder.is_dir() or not manifests.version_folders(folder):
        pytest.skip(f"models/{name} not committed yet")
    version = manifests.version_folders(folder)[-1]
    manifest = manifests.read_manifest(version)
    x = np.load(version / manifest.samples.file.path)["images"][:8].astype(np.float32)
    input_name, output_name = manifest.inputs[0].name, manifest.outputs[0].name
    (want,) = reference(version, manifest.full_model.path, {input_name: x})
    with triton.InferenceServerClient(committed_server.address) as connection:
        metadata = connection.get_model_metadata(name)
        assert [list(t.shape) for t in metadata.inputs] == [list(manifest.inputs[0].shape)]
        full = infer(connection, name, input_name, x).as_numpy(output_name)
        np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-4)
        chain = infer(connection, f"{name}.chain", input_name, x).as_numpy(output_name)
        np.testing.assert_allclose(chain, want, rtol=1e-4, atol=1e-4)
        activation = x
        for block in manifest.blocks:
            assert len(block.inputs) == 1 and len(block.outputs) == 1
            served = infer(connection, f"{name}.{block.name}", block.inputs[0].name, activation)
            (expected,) = reference(version, block.file.path, {block.inputs[0].name: activation})
            activation = served.as_numpy(block.outputs[0].name)
            np.testing.assert_allclose(activation, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(activation, want, rtol=1e-4, atol=1e-4)


def test_committed_head_refuses_an_image_with_the_headline_message(committed_server) -> None:
    from tritonclient.utils import InferenceServerException

    with triton.InferenceServerClient(committed_server.address) as connection:
        head = connection.get_model_metadata("digits_cnn.04_head").inputs[0]
        with pytest.raises(InferenceServerException) as caught:
            infer(connection, "digits_cnn.04_head", head.name, np.zeros((1, 1, 32, 32), np.float32))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == (
        f"digits_cnn.04_head input {head.name!r} expects FP32 [-1,128,2,2], got FP32 [1,1,32,32]"
    )
