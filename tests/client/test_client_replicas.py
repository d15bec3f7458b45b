"""Many replicas behind one target, as behind a headless Service: LayerClient with REPLICAS_OPTIONS
spreads its requests over all of them (round_robin), and a placement map names servers by host name."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from client_support import MODELS, samples

from layerserve.client import REPLICAS_OPTIONS, ConnectionSettings, LayerClient, Placement
from layerserve.server.launcher import ServerProcess


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    started = []
    try:
        for name in ("replica-a", "replica-b"):
            # One process each: ModelStatistics describes the worker that answers, not the server.
            log = tmp_path_factory.mktemp(name) / "server.log"
            started.append(ServerProcess(MODELS, ["--metrics-port", "-1", "--workers", "1"], log_path=log).start())
        yield [server.port for server in started]
    finally:
        for server in started:
            server.stop()


def _served(port: int) -> int:
    with LayerClient(f"127.0.0.1:{port}") as one:
        return sum(s.inference_count for s in one.model_statistics("digits_cnn"))


def test_round_robin_over_every_address_of_one_target(replicas: list[int]) -> None:
    images, _ = samples("digits_cnn", 8)
    before = [_served(port) for port in replicas]
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in replicas)  # what DNS gives for a headless Service
    with LayerClient(target, ConnectionSettings(channel_options=REPLICAS_OPTIONS)) as client:
        for _ in range(20):
            assert client.infer_array("digits_cnn", images).shape == (8, 10)
    spread = [_served(port) - was for port, was in zip(replicas, before, strict=True)]
    assert all(count > 0 for count in spread) and sum(spread) == 20 * 8, spread


def test_placement_names_servers_by_host_name(replicas: list[int]) -> None:
    images, _ = samples("digits_cnn", 16)
    first, second = (f"localhost:{port}" for port in replicas)  # e.g. <isvc>-predictor.<namespace>.svc...:80
    with LayerClient(first, placement=Placement.parse(f"0-2={first},3-4={second}")) as client:
        split = client.chain("digits_cnn", images, where="server")
        whole = client.infer_array("digits_cnn", images)
    assert split.addresses == {name: first for name in list(split.addresses)[:3]} | {
        name: second for name in list(split.addresses)[3:]}
    np.testing.assert_allclose(split.output, whole, rtol=1e-4, atol=1e-4)
