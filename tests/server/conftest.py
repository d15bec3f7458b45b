"""Fixtures: a real tiny model repository and a real server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny_repo  # tests/server is on sys.path (rootdir-relative test modules, no __init__.py)
import tritonclient.grpc as triton
from server_harness import ServerThread

from layerserve.server import logs
from layerserve.server.settings import Settings


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_repo.build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(tiny_repository: Path) -> Iterator[ServerThread]:
    logs.configure("WARNING", "text")
    settings = Settings(models=tiny_repository, port=0, metrics_port=0, max_message_bytes=1 << 20)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as connection:
        yield connection
