"""Deadlines and cancellation: a request whose client gave up while it was queued is dropped
from its batch before the run (no compute spent on it), counted, and the rest of the batch runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tiny_repo
from prometheus_client import REGISTRY
from server_harness import ServerThread

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import add_raw_input

# A batch forming under load gathers for this long after its first request: long enough that the clients
# below give up while their requests wait in it. (An idle server runs a lone request at once.)
WINDOW_US = 4_000_000
# Rows of the request that keeps the only instance busy, so the requests behind it form a batch under load.
BLOCKER_ROWS = 200_000


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from layerserve.server.settings import Settings

    root = tmp_path_factory.mktemp("slow")
    tiny_repo.build(root, "slow_cnn", "1", seed=5, max_queue_delay_us=WINDOW_US, max_batch_size=BLOCKER_ROWS)
    # Metrics on (a free port): the test reads the dropped-requests counter.
    with ServerThread(Settings(models=root, port=0, metrics_port=0, instances=1)) as running:
        yield running


def _request(value: float, rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow_cnn")
    add_raw_input(request, "x", np.full((rows, 1, 8, 8), value, np.float32))
    return request


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("layerserve_dropped_requests_total", {"model": "slow_cnn", "reason": reason}) or 0.0


def test_expired_and_cancelled_requests_are_dropped_before_the_run(slow_server: ServerThread) -> None:
    before = _dropped("cancelled") + _dropped("deadline")
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(slow_server.address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
        blocker = stub.ModelInfer.future(_request(0.5, rows=BLOCKER_ROWS))  # runs at once: the server was idle
        time.sleep(0.3)  # its 51 MB arrive in tens of ms; its run on one thread takes most of a second
        cancelled = stub.ModelInfer.future(_request(2.0, rows=3))  # queues behind it: a batch under load
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_request(1.0, rows=2), timeout=1.5)  # gives up inside the batch window
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert cancelled.cancel()
        # Joins the same gathering batch, which then runs for this request's one row only.
        answer = stub.ModelInfer(_request(3.0), timeout=60)
        assert len(blocker.result(timeout=60).raw_output_contents[0]) == BLOCKER_ROWS * 10 * 4
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow_cnn", version="1"), timeout=10)
    logits = np.frombuffer(answer.raw_output_contents[0], np.float32)
    assert logits.shape == (10,) and np.isfinite(logits).all()
    stats = statistics.model_stats[0]
    # The blocker and the last request ran; the 5 rows of abandoned work never did.
    assert (stats.execution_count, stats.inference_count) == (2, BLOCKER_ROWS + 1)
    assert sorted(b.batch_size for b in stats.batch_stats) == [1, BLOCKER_ROWS]
    assert _dropped("cancelled") + _dropped("deadline") - before == 2
    assert stats.inference_stats.fail.count == 2 and stats.inference_stats.success.count == 2



def _stream_requests(code: str) -> float:
    labels = {"rpc": "ModelStreamInfer", "model": "slow_cnn", "code": code}
    return REGISTRY.get_sample_value("layerserve_requests_total", labels) or 0.0


def test_requests_of_a_stream_the_client_cancels_count_as_cancelled(slow_server: ServerThread) -> None:
    """They were counted nowhere: neither OK nor failed, so requests_total fell short of what clients sent."""
    before = _stream_requests("CANCELLED")
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with grpc.insecure_channel(slow_server.address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
        stream = stub.ModelStreamInfer(iter([_request(0.5, rows=BLOCKER_ROWS), _request(2.0, rows=3)]), timeout=60)
        time.sleep(0.3)  # both read: the first runs for most of a second, the second waits in its batch window
        stream.cancel()
        deadline = time.monotonic() + 10
        while _stream_requests("CANCELLED") - before < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _stream_requests("CANCELLED") - before == 2


# ---------------------------------------------------------------- message and stream limits


def _code_of(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.StatusCode:
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_the_default_message_limit_comes_from_the_models(tmp_path: Path) -> None:
    """tiny_cnn at max_batch_size 4096: its largest tensor, h1 [4096,4,8,8] FP32, is 4 MiB; with headroom
    (x1.25 + 64 KiB, rounded up to a MiB) the limit is 6 MiB, not the old fixed 64 MiB."""
    from layerserve.server.settings import Settings

    tiny_repo.build(tmp_path, "wide_cnn", "1", max_batch_size=4096)
    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    with ServerThread(Settings(models=tmp_path, port=0, metrics_port=-1)) as running, \
            grpc.insecure_channel(running.address, options=options) as channel:
        assert running.running.dataplane.max_message_bytes == 6 << 20
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        over = pb.ModelInferRequest(model_name="wide_cnn")
        add_raw_input(over, "x", np.zeros((7 * 4096, 1, 8, 8), np.float32))  # 7 MiB
        assert _code_of(stub, over) == grpc.StatusCode.RESOURCE_EXHAUSTED
        under = pb.ModelInferRequest(model_name="wide_cnn")
        add_raw_input(under, "x", np.zeros((5 * 4096, 1, 8, 8), np.float32))  # 5 MiB: read, then too many rows
        assert _code_of(stub, under) == grpc.StatusCode.INVALID_ARGUMENT
        fits = pb.ModelInferRequest(model_name="wide_cnn.00_stem")
        add_raw_input(fits, "x", np.ones((4096, 1, 8, 8), np.float32))  # 1 MiB in, the 4 MiB h1 out
        assert len(stub.ModelInfer(fits, timeout=60).raw_output_contents[0]) == 4 << 20


def test_a_connection_holds_at_most_max_concurrent_streams(slow_server_streams: ServerThread) -> None:
    """Ten requests at once on one connection to a server allowing two streams: the client holds some
    back and gRPC refuses others (REFUSED_STREAM, UNAVAILABLE to the client, retryable), so the batching
    window never sees them all at once. (gRPC admits one stream over the limit while the client learns it.)"""
    with grpc.insecure_channel(slow_server_streams.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerReady(pb.ServerReadyRequest(), timeout=10)  # the server's SETTINGS are known now
        calls = [stub.ModelInfer.future(_request(float(i), rows=1)) for i in range(10)]
        codes = []
        for call in calls:
            try:
                codes.append(grpc.StatusCode.OK if call.result(timeout=60) else None)
            except grpc.RpcError as error:
                codes.append(error.code())
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow_cnn", version="1"), timeout=10)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    largest = max(b.batch_size for b in statistics.model_stats[0].batch_stats)
    assert largest <= 2 + 1, (largest, codes)


@pytest.fixture(scope="module")
def slow_server_streams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from layerserve.server.settings import Settings

    root = tmp_path_factory.mktemp("streams")
    tiny_repo.build(root, "slow_cnn", "1", seed=6, max_queue_delay_us=1_000_000)
    with ServerThread(Settings(models=root, port=0, metrics_port=-1, max_concurrent_streams=2)) as running:
        yield running
