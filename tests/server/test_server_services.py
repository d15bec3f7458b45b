"""gRPC's standard services (health, reflection) and the Prometheus scrape."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException


def test_health_overall_and_per_model(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", "inference.GRPCInferenceService", "layerserve.v1.LayerService", "tiny_cnn",
                     "tiny_cnn.01_stage1", "tiny_cnn.chain"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == serving, name
        broken = health.Check(health_pb2.HealthCheckRequest(service="broken_cnn")).status
        assert broken == health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("unknown health service answered")


def test_reflection_lists_and_describes_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="layerserve.v1.LayerService"),
        ]
        answers = list(stub.ServerReflectionInfo(iter(requests)))
    services = {s.name for s in answers[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "layerserve.v1.LayerService", "grpc.health.v1.Health"} <= services
    assert answers[1].file_descriptor_response.file_descriptor_proto
    assert answers[2].file_descriptor_response.file_descriptor_proto


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_scrape_counts_requests_errors_and_batches(server, client: triton.InferenceServerClient) -> None:
    before = scrape(server)
    tensor = triton.InferInput("x", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 1, 8, 8), np.float32))
    client.infer("tiny_cnn.chain", [tensor])
    bad = triton.InferInput("x", [2, 1, 4, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("tiny_cnn.chain", [bad])
    after = scrape(server)
    ok = 'layerserve_requests_total{code="OK",model="tiny_cnn.chain",rpc="ModelInfer"}'
    invalid = 'layerserve_requests_total{code="INVALID_ARGUMENT",model="tiny_cnn.chain",rpc="ModelInfer"}'
    assert metric(after, ok) == metric(before, ok) + 1
    assert metric(after, invalid) == metric(before, invalid) + 1
    rows = 'layerserve_batch_size_sum{model="tiny_cnn.chain"}'
    assert metric(after, rows) == metric(before, rows) + 2
    for name in ("layerserve_request_duration_seconds_bucket", "layerserve_queue_duration_seconds_count",
                 "layerserve_compute_duration_seconds_count"):
        assert name in after


def test_without_a_metrics_port_nothing_is_recorded(tiny_repository) -> None:
    """--metrics-port -1: nobody can read the metrics, so the server does not spend CPU recording them."""
    from server_harness import ServerThread

    from layerserve.server.metrics import PrometheusObserver
    from layerserve.server.observer import Silent
    from layerserve.server.settings import Settings

    for port, kind in ((-1, Silent), (0, PrometheusObserver)):
        with ServerThread(Settings(models=tiny_repository, port=0, metrics_port=port)) as running:
            assert isinstance(running.running.dataplane.observer, kind)
            with triton.InferenceServerClient(running.address) as client:
                tensor = triton.InferInput("x", [1, 1, 8, 8], "FP32")
                tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
                assert client.infer("tiny_cnn", [tensor]).as_numpy("logits").shape == (1, 10)


def test_the_observer_counts_unknown_names_under_no_label_and_keeps_none_of_them() -> None:
    """The observer looks each label set's metric children up once; a name it does not serve must still
    be counted under ``model=""`` and must not grow that lookup table (a client chooses the names)."""
    from prometheus_client import REGISTRY

    from layerserve.server import metrics

    observer = metrics.PrometheusObserver(["counted_cnn"])

    def requests(model: str) -> float:
        labels = {"rpc": "ModelInfer", "model": model, "code": "NOT_FOUND"}
        return REGISTRY.get_sample_value("layerserve_requests_total", labels) or 0.0

    before_unknown, before_served = requests(""), requests("counted_cnn")
    for index in range(500):
        observer.rpc("ModelInfer", f"no_such_model_{index}", "NOT_FOUND", 0.001)
    for _ in range(3):
        observer.rpc("ModelInfer", "counted_cnn", "NOT_FOUND", 0.001)
    assert requests("") - before_unknown == 500
    assert requests("counted_cnn") - before_served == 3
    assert list(observer._rpc_children) == [("ModelInfer", "counted_cnn", "NOT_FOUND")]
