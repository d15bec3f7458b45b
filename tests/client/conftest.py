"""Fixtures: the real server (``layerserve serve``) as a subprocess over the committed models/."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from layerserve.client import ConnectionSettings, LayerClient, ServerError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"
BUILT_IN = ("digits_cnn", "digits_resnet")
READY_DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``python -m layerserve.cli.main serve`` on a free loopback port, stopped on exit."""

    def __init__(self, models: Path, log: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable, "-m", "layerserve.cli.main", "serve", "--models", str(models),
            "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "-1", "--log-format", "text",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log_handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log_handle, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        """Poll ServerReady until it says yes; fail with the server's log after the deadline or an early exit."""
        deadline = time.monotonic() + READY_DEADLINE_S
        with LayerClient(self.address, ConnectionSettings(timeout=2.0)) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
                try:
                    if client.is_server_ready():
                        return
                except ServerError as error:
                    if error.code != grpc.StatusCode.UNAVAILABLE:
                        raise
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"server not ready after {READY_DEADLINE_S}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_handle.close()


def start_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> ServerProcess:
    server = ServerProcess(MODELS, tmp_path_factory.mktemp(name) / "server.log")
    server.wait_ready()
    return server


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


def samples(model: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The committed held-out samples of ``model`` (latest version), optionally the first ``limit``."""
    from layerserve.proto.manifest import read_manifest, version_folders

    folder = version_folders(MODELS / model)[-1]
    manifest = read_manifest(folder)
    with np.load(folder / manifest.samples.file.path) as archive:
        images, labels = archive["images"], archive["labels"]
    return images[:limit], labels[:limit]
