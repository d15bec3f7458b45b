"""The Open Inference Protocol over HTTP/REST against a real server process serving models/.

tritonclient.http unmodified (binary and JSON tensors), curl with a JSON body, ModelConfig through
tritonclient.grpc and REST, the extension's blocks and chain, and errors with the same status
semantics and messages as gRPC.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from layerserve.server.launcher import ServerProcess

MODELS = Path(__file__).resolve().parents[2] / "models"
VERSION = MODELS / "digits_cnn" / "1"


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    with ServerProcess(MODELS, ["--workers", "1", "--log-level", "WARNING"]) as server:
        yield server


@pytest.fixture
def http(served: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{served.http_port}")
    yield client
    client.close()


def reference(relative: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """What in-process ONNX Runtime computes with one file of the repository (its first output)."""
    session = ort.InferenceSession(str(VERSION / relative), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 32, 32)).astype(np.float32)


def infer(client: triton_http.InferenceServerClient, model: str, name: str, array: np.ndarray,
          binary: bool, output: str = "logits") -> np.ndarray:
    tensor = triton_http.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    result = client.infer(model, [tensor], outputs=[triton_http.InferRequestedOutput(output, binary_data=binary)])
    return result.as_numpy(output)


def test_tritonclient_http_live_ready_metadata(http: triton_http.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("digits_cnn") and http.is_model_ready("digits_cnn.chain")
    assert http.is_model_ready("digits_cnn", "1") and not http.is_model_ready("digits_cnn", "7")
    assert not http.is_model_ready("no_such_model")
    server = http.get_server_metadata()
    assert server["name"] == "layerserve"
    assert {"model_configuration", "binary_tensor_data", "layerserve.v1.LayerService"} <= set(server["extensions"])
    metadata = http.get_model_metadata("digits_cnn.04_head")
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "03_stage3_out", "datatype": "FP32", "shape": [-1, 128, 2, 2]}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_full_block_and_chain_equal_onnx_runtime(
    http: triton_http.InferenceServerClient, binary: bool
) -> None:
    x = images(3)
    want = reference("model.onnx", {"x": x})
    np.testing.assert_allclose(infer(http, "digits_cnn", "x", x, binary), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(infer(http, "digits_cnn.chain", "x", x, binary), want, rtol=1e-5, atol=1e-5)
    h = np.random.default_rng(1).standard_normal((3, 128, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(infer(http, "digits_cnn.04_head", "03_stage3_out", h, binary),
                               reference("blocks/04_head.onnx", {"03_stage3_out": h}), rtol=1e-5, atol=1e-5)


def test_binary_and_json_tensors_give_equal_answers(http: triton_http.InferenceServerClient) -> None:
    x = images(2, seed=5)
    for model in ("digits_cnn", "digits_cnn.chain"):
        np.testing.assert_array_equal(infer(http, model, "x", x, True), infer(http, model, "x", x, False))
    stem = reference("blocks/00_stem.onnx", {"x": x})  # a block with a large activation, both ways
    binary, as_json = (infer(http, "digits_cnn.00_stem", "x", x, b, "00_stem_out") for b in (True, False))
    np.testing.assert_array_equal(binary, as_json)
    np.testing.assert_allclose(binary, stem, rtol=1e-5, atol=1e-5)


def test_a_wrong_shape_is_a_400_with_expected_and_got(http: triton_http.InferenceServerClient,
                                                      served: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as raised:
        infer(http, "digits_cnn.04_head", "03_stage3_out", images(2), True)
    assert str(raised.value.status()) == "400"
    message = "digits_cnn.04_head input '03_stage3_out' expects FP32 [-1,128,2,2], got FP32 [2,1,32,32]"
    assert raised.value.message() == message
    with triton_grpc.InferenceServerClient(served.address) as grpc_client:  # gRPC says the same
        tensor = triton_grpc.InferInput("03_stage3_out", [2, 1, 32, 32], "FP32")
        tensor.set_data_from_numpy(images(2))
        with pytest.raises(InferenceServerException) as over_grpc:
            grpc_client.infer("digits_cnn.04_head", [tensor])
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT" and over_grpc.value.message() == message
    assert infer(http, "digits_cnn", "x", images(1), True).shape == (1, 10)  # and it keeps serving


def _post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_curl_with_a_json_body(served: ServerProcess) -> None:
    x = images(1, seed=3)
    body = json.dumps({"id": "curl-1", "inputs": [{"name": "x", "shape": [1, 1, 32, 32], "datatype": "FP32",
                                                   "data": x.ravel().tolist()}]})
    url = f"{served.http_url}/v2/models/digits_cnn/infer"
    curl = shutil.which("curl")
    if curl is not None:
        done = subprocess.run([curl, "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                               "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=60, check=True)
        text, status = done.stdout.rsplit("\n", 1)
        status, answer = int(status), json.loads(text)
    else:  # a client that knows nothing of the protocol
        status, answer = _post(url, body.encode(), {"Content-Type": "application/json"})
    assert status == 200
    assert answer["model_name"] == "digits_cnn" and answer["model_version"] == "1" and answer["id"] == "curl-1"
    (output,) = answer["outputs"]
    assert output["name"] == "logits" and output["datatype"] == "FP32" and output["shape"] == [1, 10]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(1, 10),
                               reference("model.onnx", {"x": x}), rtol=1e-5, atol=1e-5)


def test_model_config_through_tritonclient_grpc_and_rest(served: ServerProcess,
                                                          http: triton_http.InferenceServerClient) -> None:
    with triton_grpc.InferenceServerClient(served.address) as client:
        config = client.get_model_config("digits_cnn").config
        head = client.get_model_config("digits_cnn.04_head").config
    assert config.name == "digits_cnn" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64  # the manifest's; dims leave the batch out, as Triton's do
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [1, 32, 32])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]
    assert triton_grpc.model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count >= 1
    assert [(i.name, list(i.dims)) for i in head.input] == [("03_stage3_out", [128, 2, 2])]
    rest = http.get_model_config("digits_cnn.04_head")
    assert rest["max_batch_size"] == 64 and rest["input"][0]["dims"] == [128, 2, 2]
    assert rest["input"][0]["data_type"] == "TYPE_FP32"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        http.get_model_config("nope")


def test_blocks_and_chain_over_rest(served: ServerProcess) -> None:
    with urllib.request.urlopen(f"{served.http_url}/v2/models/digits_cnn/blocks", timeout=30) as reply:
        listing = json.loads(reply.read())
    assert listing["chain_model_name"] == "digits_cnn.chain"
    assert [b["name"] for b in listing["manifest"]["blocks"]] == ["00_stem", "01_stage1", "02_stage2", "03_stage3",
                                                                  "04_head"]
    x = images(2, seed=7)
    body = {"start": 0, "stop": 5, "keep": [3],
            "inputs": [{"name": "x", "shape": [2, 1, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, answer = _post(f"{served.http_url}/v2/models/digits_cnn/chain", json.dumps(body).encode())
    assert status == 200, answer
    assert answer["blocks_run"] == [b["name"] for b in listing["manifest"]["blocks"]]
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], np.float32).reshape(2, 10),
                               reference("model.onnx", {"x": x}), rtol=1e-5, atol=1e-5)
    (kept,) = answer["kept"]
    assert kept["block_index"] == 3 and kept["block_name"] == "03_stage3"
    assert kept["outputs"][0]["name"] == "03_stage3_out" and kept["outputs"][0]["shape"] == [2, 128, 2, 2]
    status, answer = _post(f"{served.http_url}/v2/models/digits_cnn/chain", json.dumps({**body, "stop": 9}).encode())
    assert status == 400 and answer["error"] == "digits_cnn chain expects 0 <= start < stop <= 5, got start=0 stop=9"


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v2/models/nope/infer", b"{}", 404, "unknown model 'nope'; serving ['digits_cnn', 'digits_resnet']"),
    ("GET", "/v2/models/digits_cnn/versions/7", None, 404, "model 'digits_cnn' has no version '7'; versions: 1"),
    ("POST", "/v2/models/digits_cnn/infer", b"{not json", 400, "request body is not valid JSON: "),
    ("POST", "/v2/models/digits_cnn/infer", b'{"inputs": 3}', 400, "request 'inputs' expects an array, got int"),
    ("POST", "/v2/models/digits_cnn/infer",
     b'{"inputs": [{"name": "x", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [1, 2]}]}', 400,
     "digits_cnn input 'x' declares FP32 [1,1,32,32] = 1024 elements, but 'data' holds 2"),
    ("POST", "/v2/models/digits_cnn/infer",
     b'{"inputs": [{"name": "x", "shape": [1, 1, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}',
     400, "digits_cnn input 'x' declares 8 bytes of binary data, but only 0 are left in the body"),
    ("GET", "/v2/models/digits_cnn/infer", None, 405, "GET is not allowed on '/v2/models/digits_cnn/infer'"),
    ("GET", "/v3/anything", None, 404, "no route GET '/v3/anything'"),
])
def test_rest_errors_have_the_status_and_message_grpc_gives(served: ServerProcess, method: str, path: str,
                                                            body: bytes | None, status: int, message: str) -> None:
    got, answer = _post(served.http_url + path, body, method=method) if body is not None else \
        _post(served.http_url + path, None, method=method)  # type: ignore[arg-type]
    assert got == status and answer["error"].startswith(message), answer


def test_a_body_over_the_message_limit_is_413_and_the_server_keeps_serving(served: ServerProcess) -> None:
    big = b"{" + b" " * (5 << 20) + b"}"  # models/ gets a 4 MiB limit
    status, answer = _post(f"{served.http_url}/v2/models/digits_cnn/infer", big)
    assert status == 413 and "over the server's message limit of 4,194,304 bytes" in answer["error"]
    status, _ = _post(f"{served.http_url}/v2/repository/index", b'{"ready": true}')
    assert status == 200


def test_rest_requests_are_counted_under_served_names_only(served: ServerProcess) -> None:
    _post(f"{served.http_url}/v2/models/" + "x" * 200 + "/infer", b"{}")
    _post(f"{served.http_url}/v2/models/digits_cnn/infer", b"{}")
    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    assert 'layerserve_requests_total{code="INVALID_ARGUMENT",model="digits_cnn",rpc="http.ModelInfer"}' in text
    assert 'layerserve_requests_total{code="NOT_FOUND",model="",rpc="http.ModelInfer"}' in text
    assert "x" * 200 not in text
