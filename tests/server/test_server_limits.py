"""Deadlines and cancellation: a request whose client gave up while it was queued is dropped
from its batch before the run (no compute spent on it), counted, and the rest of the batch runs."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tiny_repo
from prometheus_client import REGISTRY
from server_harness import ServerThread

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import add_raw_input

# A batch gathers for this long after its first request: long enough that the clients below give up
# while their requests wait in it.
WINDOW_US = 4_000_000


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from layerserve.server.settings import Settings

    root = tmp_path_factory.mktemp("slow")
    tiny_repo.build(root, "slow_cnn", "1", seed=5, max_queue_delay_us=WINDOW_US)
    with ServerThread(Settings(models=root, port=0, metrics_port=-1)) as running:
        yield running


def _request(value: float, rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow_cnn")
    add_raw_input(request, "x", np.full((rows, 1, 8, 8), value, np.float32))
    return request


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("layerserve_dropped_requests_total", {"model": "slow_cnn", "reason": reason}) or 0.0


def test_expired_and_cancelled_requests_are_dropped_before_the_run(slow_server: ServerThread) -> None:
    before = _dropped("cancelled") + _dropped("deadline")
    with grpc.insecure_channel(slow_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        cancelled = stub.ModelInfer.future(_request(2.0, rows=3))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_request(1.0, rows=2), timeout=1.5)  # gives up inside the batch window
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert cancelled.cancel()
        # Joins the same gathering batch, which then runs for this request's one row only.
        answer = stub.ModelInfer(_request(3.0), timeout=60)
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow_cnn", version="1"), timeout=10)
    logits = np.frombuffer(answer.raw_output_contents[0], np.float32)
    assert logits.shape == (10,) and np.isfinite(logits).all()
    stats = statistics.model_stats[0]
    assert (stats.execution_count, stats.inference_count) == (1, 1)  # 5 rows of abandoned work never ran
    assert [b.batch_size for b in stats.batch_stats] == [1]
    assert _dropped("cancelled") + _dropped("deadline") - before == 2
    assert stats.inference_stats.fail.count == 2 and stats.inference_stats.success.count == 1
