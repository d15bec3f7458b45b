"""Fixtures: the real server (``layerserve serve``) as a subprocess over the committed models/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_support import start_server

from layerserve.client import LayerClient


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of one real server over models/, shared by the client tests."""
    running = start_server(tmp_path_factory, "server")
    yield running.address
    running.stop()


@pytest.fixture()
def client(server: str) -> Iterator[LayerClient]:
    with LayerClient(server) as connected:
        yield connected
