"""Rolling updates, as Kubernetes does them (docs/deploy.md, "Rollouts"): on SIGTERM readiness turns
NOT_SERVING before the port closes and in-flight requests drain; a client with the documented
service config (layerserve.client.connection.REPLICAS_SERVICE_CONFIG: round_robin over the replicas,
retries) loses nothing when a new server comes up and the old one is terminated under load. Every
answer is checked against ONNX Runtime."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
import tiny_repo
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_server_faults import RECONNECT, Load, _inferences

from bench.fuzz import Reference
from layerserve.client.connection import REPLICAS_OPTIONS
from layerserve.server.launcher import ServerProcess

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    tiny_repo.build(root, "tiny_cnn", "1", seed=1, max_queue_delay_us=0)
    return root


def _server(repository: Path, tmp: Path, name: str, *flags: str) -> ServerProcess:
    # One process each: the test reads ModelStatistics, which describes one worker only.
    return ServerProcess(repository, ["--metrics-port", "-1", "--log-level", "WARNING", "--workers", "1", *flags],
                         log_path=tmp / f"{name}.log")


def test_sigterm_turns_readiness_not_serving_then_exits_cleanly(repository: Path, tmp_path: Path) -> None:
    server = _server(repository, tmp_path, "terminated", "--grace-s", "20")
    with server, grpc.insecure_channel(server.address) as channel:
        # A load balancer or gateway that watches health sees the flip on its open stream.
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(stream).status == SERVING
        server.process.send_signal(signal.SIGTERM)
        assert next(stream).status == NOT_SERVING
        stream.cancel()  # the watcher lets go; the server need not wait out its grace for this stream
        assert server.process.wait(timeout=60) == 0, server.log_tail()
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rolling_update_under_load_loses_no_request(repository: Path, tmp_path: Path) -> None:
    old, new = _server(repository, tmp_path, "old"), _server(repository, tmp_path, "new")
    # Both replicas' addresses, as DNS returns them for a headless Service; the new one is not up yet.
    target = f"ipv4:127.0.0.1:{old.port},127.0.0.1:{new.port}"
    # The client library's documented config: round_robin, and UNAVAILABLE and CANCELLED retried. Without
    # CANCELLED, 4 runs of 11 here lost a request or two that the old replica's shutdown cancelled
    # before any handler took it (grpc/grpc#41785).
    options = [*REPLICAS_OPTIONS, *RECONNECT]
    try:
        old.start()
        with grpc.insecure_channel(target, options=options) as channel, \
                Load(channel, Reference.load(repository)) as load:
            load.wait_for(200)
            new.start()  # maxSurge: the new replica comes up beside the old one
            for _ in range(600):  # round_robin picks it up once its connection is ready
                if _inferences(new.address) > 0:
                    break
                load.wait_for(10)
            assert _inferences(new.address) > 0, "the new replica never got traffic"
            old.process.send_signal(signal.SIGTERM)  # the kubelet terminates the old replica
            assert old.process.wait(timeout=60) == 0, old.log_tail()
            served_before = _inferences(new.address)
            load.wait_for(200)
        print(f"\nrolling update under load: {load.ok} right, failed {load.failed}, wrong {load.wrong}")
        assert load.wrong == 0
        assert load.failed == {}, load.failed
        assert _inferences(new.address) >= served_before + 200  # the new replica carries the load alone
    finally:
        old.stop(5)
        new.stop(5)
