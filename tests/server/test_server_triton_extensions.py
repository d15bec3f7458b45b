"""What Triton's own example clients ask beyond plain inference, through tritonclient unmodified: the
classification extension (``class_count``, as ``image_client.py`` asks it) on both transports, with the
manifest's labels or a Triton model's ``label_filename``; tensors placed in shared memory, refused by name;
and statistics of every model over REST."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from server_harness import ServerThread
from tritonclient.utils import InferenceServerException

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import add_raw_input
from layerserve.server.settings import Settings

MODELS = Path(__file__).resolve().parents[2] / "models"
COMMITTED = MODELS / "digits_cnn" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(Settings(models=MODELS, port=0, metrics_port=-1, workers=1)) as running:
        yield running


def _images(rows: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((rows, 1, 32, 32)).astype(np.float32)


def _logits(x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(COMMITTED), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _parsed(answer: np.ndarray) -> list[list[tuple[float, int, str | None]]]:
    """Each row's "value:index[:label]" strings, as image_client.py's postprocess reads them."""
    rows = []
    for row in answer:
        entries = []
        for item in row:
            parts = (item.decode() if isinstance(item, bytes) else item).split(":")
            entries.append((float(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else None))
        rows.append(entries)
    return rows


def _expected(logits: np.ndarray, count: int, labelled: bool = True) -> list[list[tuple[float, int, str | None]]]:
    return [[(round(float(row[i]), 6), int(i), str(i) if labelled else None) for i in np.argsort(-row, kind="stable")[:count]]
            for row in logits]


def _close(got: list, want: list) -> bool:
    return all(g[1:] == w[1:] and abs(g[0] - w[0]) <= 2e-6 for gr, wr in zip(got, want, strict=True)
               for g, w in zip(gr, wr, strict=True))


@pytest.mark.parametrize("transport", ["grpc", "http-binary", "http-json"])
def test_class_count_answers_the_top_classes_with_the_manifests_labels(server: ServerThread, transport: str) -> None:
    x = _images(3)
    want = _expected(_logits(x), 3)
    if transport == "grpc":
        with triton_grpc.InferenceServerClient(server.address) as client:
            tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("digits_cnn", [tensor],
                                  outputs=[triton_grpc.InferRequestedOutput("logits", class_count=3)])
    else:
        binary = transport == "http-binary"
        client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("digits_cnn", [tensor],
                              outputs=[triton_http.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
        client.close()
    answer = result.as_numpy("logits")
    assert answer.shape == (3, 3) and answer.dtype == object
    assert _close(_parsed(answer), want), (_parsed(answer), want)


def test_classification_on_the_chain_a_block_and_past_the_class_count(server: ServerThread) -> None:
    x = _images(2)
    with triton_grpc.InferenceServerClient(server.address) as client:
        assert "classification" in client.get_server_metadata().extensions

        def classify(model: str, output: str, count: int, x: np.ndarray = x) -> np.ndarray:
            tensor = triton_grpc.InferInput(client.get_model_metadata(model).inputs[0].name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return client.infer(model, [tensor], outputs=[triton_grpc.InferRequestedOutput(output, class_count=count)]
                                ).as_numpy(output)

        logits = _logits(x)
        assert _close(_parsed(classify("digits_cnn.chain", "logits", 2)), _expected(logits, 2))
        everything = classify("digits_cnn", "logits", 50)  # at most the 10 classes there are, as Triton
        assert everything.shape == (2, 10) and _close(_parsed(everything), _expected(logits, 10))
        stem_in = np.random.default_rng(4).standard_normal((2, 16, 16, 16)).astype(np.float32)
        activations = classify("digits_cnn.01_stage1", "01_stage1_out", 4, stem_in)
        assert all(label is None for row in _parsed(activations) for _, _, label in row)  # no labels for activations


def _raw_infer(server: ServerThread, request: pb.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return caught.value


def test_a_class_count_that_is_not_a_positive_integer_is_refused(server: ServerThread) -> None:
    request = pb.ModelInferRequest(model_name="digits_cnn")
    add_raw_input(request, "x", _images(1))
    request.outputs.add(name="logits").parameters["classification"].string_param = "three"
    error = _raw_infer(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'logits' parameter 'classification' expects a class count from 1 to" in error.details()
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}],
                       "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}).encode()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(f"{server.http_url}/v2/models/digits_cnn/infer", body), timeout=30)
    assert caught.value.code == 400 and "got 0" in json.loads(caught.value.read())["error"]


def test_tensors_in_shared_memory_are_refused_by_name(server: ServerThread) -> None:
    """No shared memory extension: an input there was refused as holding no data, an output there answered
    inline while the client went on to read its region."""
    request = pb.ModelInferRequest(model_name="digits_cnn")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1, 32, 32])
    tensor.parameters["shared_memory_region"].string_param = "input_data"
    tensor.parameters["shared_memory_byte_size"].int64_param = 4096
    error = _raw_infer(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x' is in shared memory region 'input_data', but this server has no shared memory" in error.details()
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    x = triton_http.InferInput("x", [1, 1, 32, 32], "FP32")
    x.set_data_from_numpy(_images(1))
    output = triton_http.InferRequestedOutput("logits")
    output.set_shared_memory("output_data", 40)
    with pytest.raises(InferenceServerException, match="output 'logits' is in shared memory region 'output_data'"):
        client.infer("digits_cnn", [x], outputs=[output])
    assert client.is_server_ready()
    client.close()


def test_statistics_of_every_model_over_rest(server: ServerThread) -> None:
    """``GET /v2/models/stats`` (tritonclient's ``get_inference_statistics()``) was a 500 with a traceback."""
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    names = {entry["name"] for entry in client.get_inference_statistics()["model_stats"]}
    assert {"digits_cnn", "digits_cnn.chain", "digits_resnet"} <= names
    client.close()


def test_a_triton_models_label_file_labels_its_classes(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    (folder / "1").mkdir(parents=True)
    onnx.save(onnx.load(str(COMMITTED)), str(folder / "1" / "model.onnx"))
    (folder / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    (folder / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 32, 32 ] } ]\n'
        'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]\n')
    x = _images(2)
    with ServerThread(Settings(models=tmp_path, port=0, metrics_port=-1, workers=1)) as running, \
            triton_grpc.InferenceServerClient(running.address) as client:
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answer = client.infer("digits", [tensor], outputs=[triton_grpc.InferRequestedOutput("logits", class_count=2)])
        got = _parsed(answer.as_numpy("logits"))
    want = [[(value, index, f"digit {index}") for value, index, _ in row] for row in _expected(_logits(x), 2)]
    assert _close(got, want), (got, want)


def test_a_stream_answers_every_request_and_goes_on_after_errors(server: ServerThread) -> None:
    """tritonclient's start_stream / async_stream_infer (Triton's ModelStreamInfer): every request answered
    with its id, a bad one in the callback's error while the stream goes on, classification included."""
    import queue

    x = _images(2)
    want = _logits(x)
    answers: queue.Queue = queue.Queue()
    with triton_grpc.InferenceServerClient(server.address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))

        def send(model: str, array: np.ndarray, request_id: str, **kwargs: object) -> None:
            tensor = triton_grpc.InferInput("x", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            client.async_stream_infer(model, [tensor], request_id=request_id, **kwargs)

        for index in range(6):
            send("digits_cnn", x, f"full-{index}")
        send("digits_cnn", np.zeros((1, 1, 31, 32), np.float32), "wrong-shape")
        send("no_such_model", x, "unknown")
        send("digits_cnn.chain", x, "classes", outputs=[triton_grpc.InferRequestedOutput("logits", class_count=2)])
        results, errors = {}, []
        for _ in range(9):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                results[result.get_response().id] = result
        client.stop_stream()
        assert client.is_server_ready()
    assert sorted(results) == ["classes", *(f"full-{index}" for index in range(6))]
    for index in range(6):
        np.testing.assert_allclose(results[f"full-{index}"].as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
    assert _close(_parsed(results["classes"].as_numpy("logits")), _expected(want, 2))
    assert any("expects FP32 [-1,1,32,32], got FP32 [1,1,31,32]" in error for error in errors), errors
    assert any("unknown model 'no_such_model'" in error for error in errors), errors


def test_the_aio_clients_stream(server: ServerThread) -> None:
    import asyncio

    import tritonclient.grpc.aio as triton_aio

    x = _images(3)

    async def run() -> list[np.ndarray]:
        async with triton_aio.InferenceServerClient(server.address) as client:
            async def requests():  # noqa: ANN202 - tritonclient's own request dicts
                for index in range(4):
                    tensor = triton_aio.InferInput("x", list(x.shape), "FP32")
                    tensor.set_data_from_numpy(x)
                    yield {"model_name": "digits_cnn", "inputs": [tensor], "request_id": str(index)}

            got = []
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                got.append(result.as_numpy("logits"))
                if len(got) == 4:
                    break
            return got

    for logits in asyncio.run(run()):
        np.testing.assert_allclose(logits, _logits(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call", ["load_model", "unload_model", "get_system_shared_memory_status",
                                  "get_cuda_shared_memory_status", "get_trace_settings", "get_log_settings",
                                  "get_trace_settings of a model"])
def test_triton_extensions_not_served_are_refused_saying_why(server: ServerThread, call: str) -> None:
    """gRPC's generic 'Method not found!' and a REST 404 pointing under /v2 told nothing; now UNIMPLEMENTED (501)
    says what is missing and what to do instead."""
    call, of_a_model, _ = call.partition(" of a model")
    arguments = ("digits_cnn",) if "model" in call else ()
    keywords = {"model_name": "digits_cnn"} if of_a_model else {}
    with triton_grpc.InferenceServerClient(server.address) as client, \
            pytest.raises(InferenceServerException) as grpc_refusal:
        getattr(client, call)(*arguments, **keywords)
    message = str(grpc_refusal.value)
    assert "UNIMPLEMENTED" in message and ("this server has no" in message or "fixed at start-up" in message), message
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as http_refusal:
        getattr(client, call)(*arguments, **keywords)
    client.close()
    assert http_refusal.value.status() == "501"
    assert str(grpc_refusal.value).split("] ", 1)[1] == str(http_refusal.value).split("] ", 1)[1]


@pytest.mark.parametrize("path", ["/v2/no/such/thing", "/v2/tracefoo", "/v2/loggingx/setting"])
def test_an_unknown_path_under_v2_points_at_the_routes(server: ServerThread, path: str) -> None:
    """Also paths that only begin like an extension's: they are not that extension."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server.http_url}{path}", timeout=30)
    assert caught.value.code == 404
    assert "docs/server.md lists this server's routes" in json.loads(caught.value.read())["error"]


def test_classes_that_outgrow_the_message_limit_are_refused_and_the_stream_goes_on() -> None:
    """The check before the run counts the FP32 tensor (16 KiB a row here); 4,096 class strings a row take
    ~70 KB. gRPC itself refused such an answer after the run, and on a stream that ended the stream."""
    import queue

    x = _images(24)
    many = [triton_grpc.InferRequestedOutput("00_stem_out", class_count=16 * 16 * 16)]
    settings = Settings(models=MODELS, port=0, metrics_port=-1, workers=1, max_message_bytes=1 << 20)
    with ServerThread(settings) as running, triton_grpc.InferenceServerClient(running.address) as client:
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits_cnn.00_stem", [tensor], outputs=many)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "over the server's message limit of 1,048,576 bytes; ask fewer classes" in refused.value.message()
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("digits_cnn.00_stem", [tensor], request_id="many", outputs=many)
        client.async_stream_infer("digits_cnn.00_stem", [tensor], request_id="few", outputs=[
            triton_grpc.InferRequestedOutput("00_stem_out", class_count=3)])
        got = [answers.get(timeout=30) for _ in range(2)]
        client.stop_stream()
        assert client.is_server_ready()
    errors = [str(error) for _, error in got if error is not None]
    results = [result for result, error in got if error is None]
    assert len(errors) == 1 and "ask fewer classes" in errors[0], errors
    assert len(results) == 1 and results[0].as_numpy("00_stem_out").shape == (24, 3)
